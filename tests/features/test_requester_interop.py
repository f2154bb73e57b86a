"""Interop: the official job requester (``@oada/client/jobs`` 5.3.0) and ours.

A job posted with ``doJob`` from Node is run by a Python Service and Node
sees its result, the progress the work function reported, and a failure
as a rejection; ``run_job`` gets results from the same service side by side.
Runs a small inline script with the packages in ``conformance/node_modules``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import anyio
import pytest

from oada_jobs import Job, Json, WorkerContext, run_job
from oada_jobs.client import OADAClient
from oada_jobs.testing import EmbeddedServer

from .conftest import make_service

pytestmark = pytest.mark.node

CONFORMANCE = Path(__file__).resolve().parents[2] / "conformance"

# ESM given with -e resolves packages from the working directory (conformance/).
SCRIPT = """
import { connect } from "@oada/client";
import { doJob } from "@oada/client/jobs";
const oada = await connect({ domain: process.env.OADA_URL, token: process.env.OADA_TOKEN,
                             connection: "http" });
const out = {};
const job = await doJob(oada, { service: process.env.SERVICE, type: "echo", config: { n: 7 } });
out.status = job.status;
out.result = job.result;
out.progress = Object.values(job.updates ?? {})
  .filter((update) => update.status === "progress")
  .map((update) => update.meta);
try {
  await doJob(oada, { service: process.env.SERVICE, type: "fail", config: {} });
  out.failure = "resolved";
} catch (error) {
  out.failure = error.message;
}
console.log(JSON.stringify(out));
await oada.disconnect();
process.exit(0);
"""


async def echo(job: Job[Json], ctx: WorkerContext) -> Json:
    await ctx.progress(0.5, "halfway")
    return {"echo": job.config, "by": "python"}


async def fail(job: Job[Json], ctx: WorkerContext) -> Json:
    raise RuntimeError("boom")


async def test_node_requester_sees_the_python_service_results(
    server: EmbeddedServer, oada: OADAClient
) -> None:
    node = shutil.which("node")
    assert node is not None, "node is needed for the interop tests"
    # @oada/client/jobs posts to the current layout of @oada/jobs: "pending".
    name = "interop-service"
    service = make_service(server, name, layout="pending")
    service.on("echo", 10, echo)
    service.on("fail", 10, fail)
    env = {**os.environ, "OADA_URL": server.url, "OADA_TOKEN": server.token, "SERVICE": name}
    # The client's DEBUG tracing prints the token; keep it out of failure output.
    env.pop("DEBUG", None)
    async with service:
        with anyio.fail_after(60):
            done = await anyio.run_process(
                [node, "--input-type=module", "-e", SCRIPT],
                cwd=CONFORMANCE,
                env=env,
                stdin=subprocess.DEVNULL,
                check=False,
            )
            assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
            # And the Python requester against the same service, side by side.
            ours = await run_job(oada, name, "echo", {"n": 8}, layout="pending", timeout=15)
    seen = json.loads(done.stdout.decode().strip().splitlines()[-1])
    assert seen == {
        "status": "success",
        "result": {"echo": {"n": 7}, "by": "python"},
        "progress": [{"fraction": 0.5, "message": "halfway"}],
        "failure": "boom",
    }
    assert ours == {"echo": {"n": 8}, "by": "python"}
