"""Fixtures for the dashboard tests: an embedded server with a long random token.

The token is long and random so that "the token is on no page" is a real
check (a short token like ``god`` could appear inside any id by chance).
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette

from oada_jobs import Service
from oada_jobs._ksuid import ksuid
from oada_jobs.client import OADAClient
from oada_jobs.dashboard import DashboardConfig, create_dashboard_app
from oada_jobs.testing import EmbeddedServer, embedded_server

#: What every test service uses: no periodic sweeps, short grace.
FAST: dict[str, Any] = {"sweep_interval": 3600, "shutdown_grace": 2, "invalid_job_wait": 0.5}
#: A login secret for the tests that need one.
SECRET = "correct horse battery staple"
#: The dashboard's address in ASGI tests (a loopback name it answers to).
BASE = "http://127.0.0.1:8300"


@pytest.fixture
async def server() -> AsyncIterator[EmbeddedServer]:
    async with embedded_server(tokens=[secrets.token_urlsafe(24)]) as running:
        yield running


@pytest.fixture
async def oada(server: EmbeddedServer) -> AsyncIterator[OADAClient]:
    async with OADAClient(server.url, server.token) as client:
        yield client


@pytest.fixture
def name() -> str:
    return f"dash-{ksuid()[-10:].lower()}"


@pytest.fixture
def make_service(server: EmbeddedServer, name: str) -> Callable[..., Service]:
    def make(**options: Any) -> Service:
        return Service(
            options.pop("name", name),
            domain=server.url,
            token=server.token,
            metrics_registry=CollectorRegistry(),
            **{**FAST, **options},
        )

    return make


@pytest.fixture
def open_dashboard(server: EmbeddedServer) -> Callable[..., Any]:
    """``async with open_dashboard(**config) as (app, http):`` — the app running its
    lifespan, and an httpx client speaking to it over ASGI."""

    @asynccontextmanager
    async def start(
        services: tuple[Service, ...] = (), **config: Any
    ) -> AsyncIterator[tuple[Starlette, httpx.AsyncClient]]:
        app = create_dashboard_app(
            server.url, server.token, services=services, config=DashboardConfig(**config)
        )
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as http,
        ):
            yield app, http

    return start
