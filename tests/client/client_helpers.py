"""Helpers for client tests: clients over httpx.MockTransport."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx

from oada_jobs.client import OADAClient

Handler = Callable[[httpx.Request], httpx.Response | Awaitable[httpx.Response]]

TOKEN = "s3cret-t0ken-value"


def json_response(status: int, data: Any = None, **headers: str) -> httpx.Response:
    hdrs = {k.replace("_", "-"): v for k, v in headers.items()}
    if data is None:
        return httpx.Response(status, headers=hdrs)
    hdrs.setdefault("content-type", "application/json")
    return httpx.Response(status, headers=hdrs, content=json.dumps(data).encode())


@asynccontextmanager
async def mock_client(handler: Handler, **options: Any) -> AsyncIterator[OADAClient]:
    options.setdefault("max_backoff", 0.01)
    async with OADAClient(
        "http://oada.test",
        options.pop("token", TOKEN),
        transport=httpx.MockTransport(handler),
        **options,
    ) as oada:
        yield oada
