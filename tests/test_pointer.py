"""JSON pointers: one module for the client, the server and the framework (RFC 6901)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from oada_jobs import _pointer
from oada_jobs.reports import resolve_pointer

DOC: dict[str, Any] = {"a/b": {"m~n": 1}, "list": ["zero", "one", "two"], "": {"": "empty"}}


@given(st.lists(st.text()))
def test_split_undoes_join(path: list[str]) -> None:
    assert _pointer.split(_pointer.join(path)) == tuple(path)


@pytest.mark.parametrize(
    ("pointer", "expected"),
    [
        ("", (True, DOC)),
        ("/a~1b/m~0n", (True, 1)),
        ("/list/0", (True, "zero")),
        ("/list/2", (True, "two")),
        ("//", (True, "empty")),
        ("/list/3", (False, None)),
        ("/missing", (False, None)),
        ("/list/0/deeper", (False, None)),
    ],
)
def test_resolve(pointer: str, expected: tuple[bool, Any]) -> None:
    assert _pointer.resolve(DOC, pointer) == expected


@pytest.mark.parametrize(
    "segment",
    ["01", "00", "-1", "+1", " 1", "1 ", "1.0", "1e0", "", "\u00b2", "\u0661", "\uff11", "0x1"],
)
def test_only_rfc_array_indexes_name_an_element(segment: str) -> None:
    # A leading zero, a sign, spaces, or digits of another script name no
    # element, and following them is a miss, never an error.
    assert _pointer.array_index(segment, 10) is None
    assert _pointer.resolve(DOC, f"/list/{segment}") == (False, None)
    assert resolve_pointer(DOC, f"/list/{segment}") == (False, None)


def test_a_segment_of_thousands_of_digits_names_nothing() -> None:
    # int() refuses strings of more than 4300 digits: never reached.
    huge = "9" * 5000
    assert _pointer.array_index(huge, 10) is None
    assert _pointer.resolve(DOC, f"/list/{huge}") == (False, None)


def test_an_index_past_the_end_names_nothing() -> None:
    assert _pointer.array_index("0", 0) is None
    assert _pointer.array_index("9", 10) == 9
    assert _pointer.array_index("10", 10) is None


def test_text_that_is_not_a_pointer_is_refused() -> None:
    with pytest.raises(ValueError, match="starting with '/'"):
        _pointer.resolve(DOC, "list/0")
