import re

from oada_jobs._ksuid import ksuid


def test_ksuids_are_27_base62_chars_and_sort_in_creation_order() -> None:
    keys = [ksuid() for _ in range(5000)]
    assert all(re.fullmatch(r"[0-9A-Za-z]{27}", k) for k in keys)
    assert keys == sorted(keys)
    assert len(set(keys)) == len(keys)
