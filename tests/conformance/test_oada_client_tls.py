"""The official OADA clients against the embedded server over TLS.

``@oada/client`` 1.1.4 speaks only ``wss://``, and so does the original job
framework built on it, ``@oada/jobs`` 1.0.4, which runs here as a real job
service; 5.3.0 runs again in ``http`` mode, which sends its requests over
``https://`` and its watches over ``wss://``. The server uses its generated
development certificate, and Node trusts its CA through
``NODE_EXTRA_CA_CERTS``: certificate and host name verification stay on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from node_cases import (
    CLIENT1_CASES,
    CLIENT1_SCRIPT,
    CLIENT5_CASES,
    CLIENT5_SCRIPT,
    JOBS1_CASES,
    JOBS1_SCRIPT,
    MAX_BODY_BYTES,
    NodeRun,
    list_cases,
    run_cases,
    server_env,
)

from oada_jobs.testing import EmbeddedServer, embedded_server

pytestmark = pytest.mark.node


@pytest.fixture(scope="module")
async def tls_server() -> AsyncIterator[EmbeddedServer]:
    """One TLS server for the module; every run writes under its own prefix.

    It pings every second: @oada/client 1.1.4 never reconnects, so a session
    that the keepalive wrongly ended would fail every later case.
    """
    async with embedded_server(
        tls=True, ws_ping_interval=1.0, max_body_bytes=MAX_BODY_BYTES
    ) as server:
        assert server.url.startswith("https://")
        assert server.ca_cert is not None
        yield server


@pytest.fixture(scope="module")
async def client1(tls_server: EmbeddedServer) -> NodeRun:
    """Every @oada/client 1.1.4 case, run once."""
    return await run_cases(CLIENT1_SCRIPT, "@oada/client 1.1.4 (wss)", server_env(tls_server))


@pytest.fixture(scope="module")
async def jobs1(tls_server: EmbeddedServer) -> NodeRun:
    """An @oada/jobs 1.0.4 service running a succeeding and a failing job."""
    return await run_cases(JOBS1_SCRIPT, "@oada/jobs 1.0.4 service (wss)", server_env(tls_server))


@pytest.fixture(scope="module")
async def client5_tls(tls_server: EmbeddedServer) -> NodeRun:
    """Every @oada/client 5.3.0 case over TLS (HTTPS requests, WSS watches)."""
    return await run_cases(
        CLIENT5_SCRIPT,
        "@oada/client 5.3.0 (http over TLS)",
        {**server_env(tls_server), "CONNECTION": "http"},
    )


async def test_case_lists_match_scripts() -> None:
    assert await list_cases(CLIENT1_SCRIPT) == CLIENT1_CASES
    assert await list_cases(JOBS1_SCRIPT) == JOBS1_CASES


@pytest.mark.parametrize("case", CLIENT1_CASES)
async def test_oada_client_1(client1: NodeRun, case: str) -> None:
    client1.check(case)


@pytest.mark.parametrize("case", JOBS1_CASES)
async def test_oada_jobs_1(jobs1: NodeRun, case: str) -> None:
    jobs1.check(case)


@pytest.mark.parametrize("case", CLIENT5_CASES)
async def test_oada_client_5_tls(client5_tls: NodeRun, case: str) -> None:
    client5_tls.check(case)
