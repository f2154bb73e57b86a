"""Jobs posted with oada-jobs run by the original ``@oada/jobs`` 1.0.4 service.

``conformance/oada-jobs-1-service.cjs`` runs the original TypeScript
``Service`` (workers ``echo`` and ``fail``) on the embedded server over TLS
(its client speaks only ``wss://``); the test posts jobs with
:func:`oada_jobs.testing.post_job` in the ``classic`` layout, the one that
service uses, and waits for them with :func:`oada_jobs.testing.wait_for_job`.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import AsyncIterator

import anyio
import pytest
from anyio.abc import Process
from node_cases import CONFORMANCE, node_binary, server_env

from oada_jobs import OADAClient
from oada_jobs.testing import EmbeddedServer, embedded_server, post_job, wait_for_job

pytestmark = pytest.mark.node

SERVICE = "conformance-original-service"
SCRIPT = CONFORMANCE / "oada-jobs-1-service.cjs"


@pytest.fixture
async def tls_server() -> AsyncIterator[EmbeddedServer]:
    async with embedded_server(tls=True) as server:
        yield server


@pytest.fixture
async def original_service(tls_server: EmbeddedServer) -> AsyncIterator[Process]:
    """The @oada/jobs 1.0.4 service, started and watching its job list."""
    env = {**os.environ, **server_env(tls_server), "SERVICE": SERVICE}
    async with await anyio.open_process(
        [node_binary(), str(SCRIPT)], cwd=CONFORMANCE, env=env, stdin=subprocess.PIPE
    ) as process:
        assert process.stdout is not None
        assert process.stdin is not None
        with anyio.fail_after(30):
            line = b""
            async for chunk in process.stdout:
                line += chunk
                if b"\n" in line:
                    break
        assert json.loads(line) == {"event": "ready"}, line
        yield process
        # Closing stdin ends the service.
        await process.stdin.aclose()
        with anyio.fail_after(10):
            await process.wait()


async def test_original_service_runs_our_jobs(
    tls_server: EmbeddedServer, original_service: Process
) -> None:
    async with OADAClient(
        tls_server.url, tls_server.token, verify=tls_server.ssl_context()
    ) as oada:
        # One job at a time: when two of its runners file at the same moment,
        # @oada/client 1.1.4's tree PUT retries a 412 with stale state and
        # crashes the service with a 422 -- on any server (docs/conformance.md).
        ok = await post_job(oada, SERVICE, "echo", {"x": 1})
        done = await wait_for_job(oada, ok, 20, filed="classic")
        failing = await post_job(oada, SERVICE, "fail")
        failed = await wait_for_job(oada, failing, 20, filed="classic")
        # Filed means the service has written everything: read the final state.
        done_updates = (await oada.get(f"/{ok}/updates")).data
        failed_updates = (await oada.get(f"/{failing}/updates")).data
    assert done.status == "success"
    assert done.result == {"echo": {"x": 1}}
    assert failed.status == "failure"
    assert isinstance(done_updates, dict)
    assert isinstance(failed_updates, dict)
    # Update keys are time-ordered KSUIDs, so sorted keys give the POST order.
    assert [done_updates[k]["status"] for k in sorted(done_updates)] == ["started", "success"]
    assert [failed_updates[k]["status"] for k in sorted(failed_updates)] == ["started", "failure"]
