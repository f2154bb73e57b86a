"""A request body's JSON items are counted before it is decoded (``max_body_items``).

Decoding, merging and storing a body takes time in proportion to its keys,
strings and elements, on the event loop every client shares: a 20 MiB body
of a million keys held it for seconds. Items are its strings (keys
included) and the commas between values; commas and quotes inside strings
are not items.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from ws_helpers import ws_connect

from oada_jobs.server.edge import Reject, decode_json
from oada_jobs.testing import embedded_server

AUTH = {"authorization": "Bearer god"}
LIMIT = 1000


def items(value: Any) -> int:
    """Strings (keys included) and commas between members and elements of *value*."""
    if isinstance(value, str):
        return 1
    if isinstance(value, dict):
        return 2 * len(value) - 1 + sum(items(v) for v in value.values()) if value else 0
    if isinstance(value, list):
        return len(value) - 1 + sum(items(v) for v in value) if value else 0
    return 0


SHAPES: list[Any] = [
    {f"k{i}": i for i in range(500)},
    [1] * 1001,
    {"s": ['a,"b\\', "\\\\", '",",'] * 250},
    {"nested": [{"x": [1, 2, "y"]}] * 200},
    {"text": 'x,"' * 100_000, "n": [None, True, 1.5, -0.0] * 200},
]


@pytest.mark.parametrize("value", SHAPES, ids=range(len(SHAPES)))
def test_the_edge_counts_items_exactly(value: Any) -> None:
    text = json.dumps(value).encode()
    n = items(value)
    assert decode_json(text, max_depth=64, max_items=n) == value
    with pytest.raises(Reject) as refused:
        decode_json(text, max_depth=64, max_items=n - 1)
    assert refused.value.status == 413


async def test_bodies_over_max_body_items_get_413_over_http_and_websocket() -> None:
    async with embedded_server(max_body_items=LIMIT) as server:
        fits = {f"k{i}": "v" for i in range(LIMIT // 3)}
        over = {f"k{i}": i for i in range(LIMIT)}
        async with httpx.AsyncClient(base_url=server.url, headers=AUTH) as c:
            assert (await c.put("/bookmarks/fits", json=fits)).status_code == 201
            put = await c.put("/bookmarks/over", json=over)
            assert put.status_code == 413, put.text
            assert f"more than {LIMIT} JSON items" in put.json()["message"]
            assert (await c.get("/bookmarks/over")).status_code == 404
            async with ws_connect(server) as ws:
                # Just over: the frame passes, the core refuses the body.
                reply = await ws.request("put", "/bookmarks/over", data=over)
                assert reply["status"] == 413, reply
                # Far over: the frame itself is refused, under its requestId.
                far = {f"k{i}": i for i in range(10 * LIMIT)}
                reply = await ws.request("put", "/bookmarks/over", data=far, request_id="far")
                assert reply["status"] == 413, reply
                assert (await ws.request("ping", ""))["status"] == 204
            assert (await c.get("/bookmarks/over")).status_code == 404
            assert (await c.get("/bookmarks/fits")).json() == fits


async def test_a_body_of_many_keys_is_refused_at_the_default_limit() -> None:
    async with embedded_server() as server:
        body = json.dumps({f"k{i}": i for i in range(600_000)})  # 1.2 million items, 11 MiB
        async with httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=60) as c:
            put = await c.put(
                "/resources/many", content=body, headers={"content-type": "application/json"}
            )
            assert put.status_code == 413, put.text
