"""The official ``@oada/client`` 5.3.0 against the embedded server.

The client runs in Node (``conformance/oada-client-5.mjs``) once per
connection mode, ``http`` (requests over HTTP, watches over a side
WebSocket) and ``ws`` (everything over one WebSocket), each against a fresh
server; every case is one thing the client does, checked from its side.

The ``ws`` run's server pings every second, so the client's sockets live
through several keepalive rounds (a session that the keepalive wrongly ended
would fail the cases that follow). The ``http`` run's server keeps no
documents in memory between requests, so the cases also read and write
documents reloaded from the database.

A third run uses a server with ``quirks="reference"``: the client must work
just as well against the imitation of the reference server, whose
differences the cases then expect (``QUIRKS=reference``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import anyio.abc
import node_cases
import pytest
from node_cases import (
    CLIENT5_CASES,
    CLIENT5_SCRIPT,
    MAX_BODY_BYTES,
    NodeRun,
    list_cases,
    run_cases,
    server_env,
)

from oada_jobs.testing import EmbeddedServer, embedded_server

pytestmark = pytest.mark.node


@pytest.fixture(
    scope="module",
    params=[("http", "none", None, 0), ("ws", "none", 1.0, None), ("ws", "reference", None, None)],
    ids=["http", "ws", "ws-reference"],
)
async def client5(request: pytest.FixtureRequest) -> AsyncIterator[NodeRun]:
    """Every case run once against a fresh server, in one connection mode."""
    mode, quirks, ping_interval, cache_size = request.param
    async with embedded_server(
        quirks=quirks,
        ws_ping_interval=ping_interval,
        max_body_bytes=MAX_BODY_BYTES,
        document_cache_size=cache_size,
    ) as server:
        yield await run_cases(
            CLIENT5_SCRIPT,
            f"@oada/client 5.3.0 ({mode}, quirks={quirks})",
            {**server_env(server), "CONNECTION": mode, "QUIRKS": quirks},
        )


async def test_case_list_matches_script() -> None:
    assert await list_cases(CLIENT5_SCRIPT) == CLIENT5_CASES


@pytest.mark.parametrize("case", CLIENT5_CASES)
async def test_oada_client_5(client5: NodeRun, case: str) -> None:
    client5.check(case)


async def test_tokens_never_reach_the_test_output(server: EmbeddedServer) -> None:
    # The client's DEBUG tracing prints the bearer token; failure messages
    # quote node's output, so run_cases redacts it.
    run = await run_cases(
        CLIENT5_SCRIPT,
        "@oada/client 5.3.0 (http, traced)",
        {**server_env(server), "CONNECTION": "http", "CASES": "connect", "DEBUG": "@oada/client:*"},
    )
    run.check("connect")
    assert "Bearer <token>" in run.stderr
    assert server.token not in run.stderr


async def test_a_hung_run_is_killed_and_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    # A server that accepts connections and never answers: the client hangs.
    async def silent(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            await anyio.sleep_forever()

    monkeypatch.setattr(node_cases, "RUN_TIMEOUT", 3.0)
    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, silent)
            run = await node_cases.run_cases(
                CLIENT5_SCRIPT,
                "@oada/client 5.3.0 (silent server)",
                {"OADA_URL": f"http://127.0.0.1:{port}", "CASE_TIMEOUT_MS": "60000"},
            )
            tg.cancel_scope.cancel()
    assert "[killed: the run took longer than 3 s]" in run.stderr
    with pytest.raises(AssertionError, match="case 'connect' was not reported"):
        run.check("connect")
