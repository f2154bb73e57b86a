"""Fixtures for the requester, periodic-job and report tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from oada_jobs import Service
from oada_jobs._ksuid import ksuid
from oada_jobs.client import OADAClient
from oada_jobs.testing import EmbeddedServer

#: Options that keep a test service fast and quiet: no periodic sweeps, short grace.
FAST: dict[str, Any] = {"sweep_interval": 3600, "shutdown_grace": 5, "invalid_job_wait": 0.5}


@pytest.fixture
async def oada(server: EmbeddedServer) -> AsyncIterator[OADAClient]:
    async with OADAClient(server.url, server.token) as client:
        yield client


@pytest.fixture
def name() -> str:
    """A fresh service name per test."""
    return f"feat-{ksuid()[-10:].lower()}"


def make_service(server: EmbeddedServer, name: str, **options: Any) -> Service:
    """A service on *server* with its own metrics registry."""
    return Service(
        name,
        domain=server.url,
        token=server.token,
        metrics_registry=CollectorRegistry(),
        **{**FAST, **options},
    )
