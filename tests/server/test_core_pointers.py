"""Paths into documents follow JSON pointer rules (RFC 6901), as the client and framework do."""

from __future__ import annotations

import pytest
from core_helpers import open_core


@pytest.mark.parametrize("segment", ["01", "00", "+1", "-1", "\u00b2", "\u0661"])
async def test_an_array_element_is_named_only_by_an_rfc_6901_index(segment: str) -> None:
    async with open_core() as c:
        await c.ok("put", "/resources/L", {"a": ["zero", "one"], "k/~": 1})
        assert (await c.get("/resources/L/a/1")).data == "one"
        assert (await c.get("/resources/L/k~1~0")).data == 1
        assert (await c.get(f"/resources/L/a/{segment}")).status == 404
