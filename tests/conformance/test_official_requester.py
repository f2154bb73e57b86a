"""The official job requester (``@oada/client/jobs`` 5.3.0) against our Service.

An :class:`oada_jobs.Service` with the ``pending`` layout (the one current
``@oada/jobs`` and ``@oada/client/jobs`` use) runs on the embedded server;
``conformance/jobs-requester.mjs`` posts jobs to it with ``doJob`` and
``JobsRequest`` and checks what comes back, in both connection modes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from node_cases import REQUESTER_CASES, REQUESTER_SCRIPT, NodeRun, list_cases, run_cases, server_env

from oada_jobs import Job, Json, Service, WorkerContext
from oada_jobs.testing import embedded_server

pytestmark = pytest.mark.node

SERVICE = "conformance-requester"


async def echo(job: Job[Json], ctx: WorkerContext) -> Json:
    return {"echo": job.config}


async def fail(job: Job[Json], ctx: WorkerContext) -> Json:
    raise RuntimeError("boom")


@pytest.fixture(scope="module", params=["http", "ws"])
async def requester(request: pytest.FixtureRequest) -> AsyncIterator[NodeRun]:
    """Every requester case, run once per connection mode against a running Service."""
    mode: str = request.param
    async with embedded_server() as server:
        service = Service(SERVICE, domain=server.url, token=server.token, layout="pending")
        service.on("echo", 10, echo)
        service.on("fail", 10, fail)
        async with service:
            yield await run_cases(
                REQUESTER_SCRIPT,
                f"@oada/client/jobs 5.3.0 ({mode}) with oada_jobs.Service",
                {**server_env(server), "SERVICE": SERVICE, "CONNECTION": mode},
            )


async def test_case_list_matches_script() -> None:
    assert await list_cases(REQUESTER_SCRIPT) == REQUESTER_CASES


@pytest.mark.parametrize("case", REQUESTER_CASES)
async def test_official_requester(requester: NodeRun, case: str) -> None:
    requester.check(case)
