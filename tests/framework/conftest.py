"""Fixtures for the job framework's end-to-end tests against the embedded server."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import anyio
import pytest
from prometheus_client import CollectorRegistry

from oada_jobs import Service
from oada_jobs._ksuid import ksuid
from oada_jobs.client import OADAClient
from oada_jobs.testing import EmbeddedServer, embedded_server

#: Options that keep tests fast and deterministic: no sweeps unless a test
#: asks, quick retries, short grace.
FAST: dict[str, Any] = {
    "sweep_interval": 3600,
    "retry_initial": 0.05,
    "retry_max": 0.5,
    "invalid_job_wait": 0.5,
    "shutdown_grace": 5,
}


def today() -> str:
    return datetime.now(UTC).date().isoformat()


def key_of(job_id: str) -> str:
    return job_id.removeprefix("resources/")


@pytest.fixture
async def server(request: pytest.FixtureRequest) -> AsyncIterator[EmbeddedServer]:
    """The shared fresh embedded server; ``parametrize("server", ["reference"], indirect=True)``
    runs a test against one imitating the reference OADA server's quirks."""
    async with embedded_server(quirks=getattr(request, "param", "none")) as running:
        yield running


@pytest.fixture
def domain(server: Any) -> str:
    return str(server.url)


@pytest.fixture
async def oada(domain: str) -> AsyncIterator[OADAClient]:
    async with OADAClient(domain, "god") as client:
        yield client


@pytest.fixture
def name() -> str:
    """A fresh service name, so tests sharing a server never see each other's jobs."""
    return f"svc-{ksuid()[-12:]}"


@pytest.fixture
def make_service(domain: str, name: str) -> Callable[..., Service]:
    def make(**options: Any) -> Service:
        options = {**FAST, **options}
        options.setdefault("metrics_registry", CollectorRegistry())
        if "oada" not in options:
            options.setdefault("domain", domain)
            options.setdefault("token", "god")
        return Service(options.pop("name", name), **options)

    return make


async def wait_for_status(
    oada: OADAClient, resource_id: str, timeout: float = 10
) -> dict[str, Any]:
    """Wait (watching) until a resource has a finished ``status``; return its body."""
    path = f"/{resource_id}"
    with anyio.fail_after(timeout):
        response = await oada.get(path)
        if response.data.get("status") in ("success", "failure"):
            return dict(response.data)
        async with oada.watch(path, rev=response.rev) as changes:
            async for change in changes:
                if (change.body or {}).get("status") in ("success", "failure"):
                    break
        return dict((await oada.get(path)).data)


async def wait_list_empty(oada: OADAClient, path: str, timeout: float = 30) -> None:
    """Wait (watching) until the list at *path* has no job keys left."""

    def empty(data: Mapping[str, Any]) -> bool:
        return not [key for key in data if not key.startswith("_")]

    with anyio.fail_after(timeout):
        response = await oada.get(path)
        if empty(response.data):
            return
        async with oada.watch(path, rev=response.rev) as changes:
            async for _change in changes:
                if empty((await oada.get(path)).data):
                    return


class LogWaiter(logging.Handler):
    """Collects ``oada_jobs`` records and lets a test await one that matches."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._event = anyio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self._event.set()
        self._event = anyio.Event()

    def text(self) -> str:
        return "\n".join(record.getMessage() for record in self.records)

    async def wait_for(
        self, predicate: Callable[[logging.LogRecord], bool], timeout: float = 10
    ) -> logging.LogRecord:
        with anyio.fail_after(timeout):
            seen = 0
            while True:
                event = self._event
                for record in self.records[seen:]:
                    if predicate(record):
                        return record
                seen = len(self.records)
                await event.wait()


@pytest.fixture
def logs() -> Any:
    handler = LogWaiter()
    root = logging.getLogger("oada_jobs")
    old_level = root.level
    root.setLevel(logging.DEBUG)
    root.addHandler(handler)
    yield handler
    root.removeHandler(handler)
    root.setLevel(old_level)
