import re
import time

import pytest

import oada_jobs._ksuid as module
from oada_jobs._ksuid import ksuid


def test_ksuids_are_27_base62_chars_and_sort_in_creation_order() -> None:
    keys = [ksuid() for _ in range(5000)]
    assert all(re.fullmatch(r"[0-9A-Za-z]{27}", k) for k in keys)
    assert keys == sorted(keys)
    assert len(set(keys)) == len(keys)


def test_keys_counted_up_within_a_second_match_their_encoding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # One fixed second, and a key three steps short of carrying over three
    # base62 digits.
    monkeypatch.setattr(time, "time", lambda: 1_700_000_000.5)
    ts = 1_700_000_000 - module._EPOCH
    payload = 62**3 * 1000 - 3 - (ts << 128) % 62**3
    monkeypatch.setattr(module, "_last_ts", ts)
    monkeypatch.setattr(module, "_last_payload", payload)
    monkeypatch.setattr(module, "_last_text", module._encode((ts << 128) | payload))

    keys = [ksuid() for _ in range(6)]

    assert keys == [module._encode((ts << 128) | (payload + n)) for n in range(1, 7)]
    assert keys[2].endswith("000")
    assert not keys[1].endswith("0")
