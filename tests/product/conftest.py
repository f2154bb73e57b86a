"""Fixtures for the command-line tests: an embedded server and a CLI runner."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from product_helpers import CLI, CLI_ENV

from oada_jobs.client import OADAClient
from oada_jobs.testing import EmbeddedServer, embedded_server


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # A developer's .env or OADA_* variables must not change what tests see.
    monkeypatch.chdir(tmp_path)
    for name in CLI_ENV:
        monkeypatch.delenv(name, raising=False)
    return


@pytest.fixture
async def server() -> AsyncIterator[EmbeddedServer]:
    async with embedded_server() as running:
        yield running


@pytest.fixture
def cli(server: EmbeddedServer) -> CLI:
    """The CLI pointed at the test server, for the service ``svc``."""
    return CLI({"OADA_DOMAIN": server.url, "OADA_TOKEN": server.token, "OADA_JOBS_SERVICE": "svc"})


@pytest.fixture
def bare_cli() -> CLI:
    """The CLI with no settings at all."""
    return CLI({})


@pytest.fixture
async def oada(server: EmbeddedServer) -> AsyncIterator[OADAClient]:
    async with OADAClient(server.url, server.token) as client:
        yield client
