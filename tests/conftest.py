"""Shared fixtures for the whole suite.

``server``
    A fresh in-process embedded OADA server per test (empty in-memory
    database, development tokens ``god`` and ``abc``), yielded as an
    :class:`oada_jobs.testing.EmbeddedServer`: use ``server.url``,
    ``server.ws_url``, ``server.token`` and, for white-box checks,
    ``server.core``. For other settings call
    :func:`oada_jobs.testing.embedded_server` yourself.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from oada_jobs.testing import EmbeddedServer, embedded_server


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def server() -> AsyncIterator[EmbeddedServer]:
    async with embedded_server() as running:
        yield running
