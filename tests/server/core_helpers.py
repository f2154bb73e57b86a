"""Helpers for tests that call :class:`OADACore` directly (no transport)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio

from oada_jobs.server.config import ServerConfig
from oada_jobs.server.core import CoreRequest, CoreResponse, OADACore

SAM_BM = "resources/default:resources_bookmarks_321"
FRANK_BM = "resources/default:resources_bookmarks_123"

_UNSET: Any = object()


@dataclass
class Reply:
    """A :class:`CoreResponse` with the body decoded when it is JSON."""

    raw: CoreResponse

    @property
    def status(self) -> int:
        return self.raw.status

    @property
    def headers(self) -> dict[str, str]:
        return self.raw.headers

    @property
    def rev(self) -> int:
        return int(self.raw.headers["x-oada-rev"])

    @property
    def data(self) -> Any:
        return json.loads(self.raw.body) if self.raw.body else None

    @property
    def location(self) -> str:
        return self.raw.headers["content-location"]


class Caller:
    """Sends requests to a core as one token (``god`` by default)."""

    def __init__(self, core: OADACore, token: str | None = "god") -> None:
        self.core = core
        self.token = token

    def as_token(self, token: str | None) -> Caller:
        return Caller(self.core, token)

    async def request(
        self,
        method: str,
        path: str,
        data: Any = _UNSET,
        *,
        content_type: str | None = "application/json",
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        hdrs: dict[str, str] = {}
        if self.token is not None:
            hdrs["authorization"] = f"Bearer {self.token}"
        body = b""
        if raw is not None:
            body = raw
        elif data is not _UNSET:
            body = json.dumps(data).encode()
        if (raw is not None or data is not _UNSET) and content_type is not None:
            hdrs["content-type"] = content_type
        hdrs.update(headers or {})
        return Reply(await self.core.handle(CoreRequest(method, path, hdrs, body)))

    async def get(self, path: str, **kw: Any) -> Reply:
        return await self.request("get", path, **kw)

    async def head(self, path: str, **kw: Any) -> Reply:
        return await self.request("head", path, **kw)

    async def put(self, path: str, data: Any = _UNSET, **kw: Any) -> Reply:
        return await self.request("put", path, data, **kw)

    async def post(self, path: str, data: Any = _UNSET, **kw: Any) -> Reply:
        return await self.request("post", path, data, **kw)

    async def delete(self, path: str, **kw: Any) -> Reply:
        return await self.request("delete", path, **kw)

    async def ok(self, method: str, path: str, data: Any = _UNSET, **kw: Any) -> Reply:
        """Like :meth:`request`, asserting a 2xx status."""
        reply = await self.request(method, path, data, **kw)
        assert 200 <= reply.status < 300, (method, path, reply.status, reply.raw.body)
        return reply


@asynccontextmanager
async def open_core(**config: Any) -> AsyncIterator[Caller]:
    """An open in-memory core (or per *config*) and a caller for token ``god``."""
    async with OADACore(ServerConfig(**config)) as core:
        yield Caller(core)


def collect(core: OADACore, resource_id: str) -> list[tuple[int, list[dict[str, Any]]]]:
    """Subscribe to *resource_id*; the returned list fills with ``(rev, changes)``."""
    seen: list[tuple[int, list[dict[str, Any]]]] = []
    core.subscribe(resource_id, lambda rid, rev, changes: seen.append((rev, changes)))
    return seen


def request(method: str, path: str, data: Any = None, *, raw: bytes | None = None) -> CoreRequest:
    headers = {"authorization": "Bearer god"}
    body = b""
    if raw is not None:
        headers["content-type"] = "application/octet-stream"
        body = raw
    elif data is not None:
        headers["content-type"] = "application/json"
        body = json.dumps(data).encode()
    return CoreRequest(method, path, headers, body)


class Answers:
    """Submits requests in one go and collects their answers, in the order given."""

    def __init__(self, core: OADACore) -> None:
        self.core = core
        self.log: list[Any] = []
        self.responses: dict[int, CoreResponse] = {}
        self._answered = anyio.Event()
        self._expected = 0

    def submit(self, *requests: CoreRequest) -> None:
        for req in requests:
            n = self._expected
            self._expected += 1
            self.core.submit(req, lambda response, n=n: self._answer(n, response))

    def _answer(self, n: int, response: CoreResponse) -> None:
        self.log.append(("answer", n))
        self.responses[n] = response
        self._answered.set()

    async def wait(self) -> list[CoreResponse]:
        # Some answers come while later requests are still being submitted.
        with anyio.fail_after(5):
            while len(self.responses) < self._expected:
                self._answered = anyio.Event()
                await self._answered.wait()
        return [self.responses[n] for n in range(self._expected)]
