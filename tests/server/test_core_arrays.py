"""Writes and deletes that would go inside an array are refused, never reshaping it.

JSON merge has no way to change one array element: the reference server
builds the write as nested objects and merges them, so ``PUT list/0`` turns
the array into an object with a key ``"0"``. Here such a write, or a DELETE
of an array element, is a 409 that changes nothing; the whole array is
written instead.
"""

from __future__ import annotations

import pytest
from core_helpers import collect, open_core

DOC = {"list": [{"a": 1}, 2, [3]], "obj": {"x": 1}}


@pytest.mark.parametrize(
    "path",
    [
        "/resources/A/list/0",
        "/resources/A/list/0/a",
        "/resources/A/list/2/0",
        "/resources/A/list/9",
    ],
)
async def test_a_put_inside_an_array_is_409_and_changes_nothing(path: str) -> None:
    async with open_core() as c:
        await c.ok("put", "/resources/A", DOC)
        seen = collect(c.core, "resources/A")
        for method in ("put", "post"):
            reply = await c.request(method, path, {"b": 2})
            assert reply.status == 409, (method, reply.data)
            assert "array" in reply.data["message"]
        got = (await c.get("/resources/A")).data
        assert got["list"] == DOC["list"]
        assert got["_rev"] == 1
        assert seen == []


@pytest.mark.parametrize(
    "path", ["/resources/A/list/0", "/resources/A/list/1", "/resources/A/list/2/0"]
)
async def test_a_delete_of_an_array_element_is_409_and_changes_nothing(path: str) -> None:
    async with open_core() as c:
        await c.ok("put", "/resources/A", DOC)
        reply = await c.delete(path)
        assert reply.status == 409, reply.data
        assert "array" in reply.data["message"]
        got = (await c.get("/resources/A")).data
        assert got["list"] == DOC["list"]
        assert got["_rev"] == 1


async def test_whole_arrays_and_keys_beside_them_are_still_written() -> None:
    async with open_core() as c:
        await c.ok("put", "/resources/A", DOC)
        await c.ok("put", "/resources/A/list", [1, 2])
        assert (await c.get("/resources/A/list")).data == [1, 2]
        await c.ok("put", "/resources/A", {"list": [9]})
        assert (await c.get("/resources/A/list")).data == [9]
        await c.ok("put", "/resources/A/obj/y", 2)
        await c.ok("delete", "/resources/A/list")
        assert (await c.get("/resources/A/list")).status == 404
        # A key inside an object inside an array can still be deleted.
        await c.ok("put", "/resources/A", {"rows": [{"k": 1, "v": 2}]})
        await c.ok("delete", "/resources/A/rows/0/k")
        assert (await c.get("/resources/A/rows")).data == [{"v": 2}]
