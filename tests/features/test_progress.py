"""Progress: a work function reports a fraction and a message as job updates."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any, cast

import anyio
import pytest

from oada_jobs import Job, Json, WorkerContext
from oada_jobs.client import OADAClient
from oada_jobs.requester import (
    PROGRESS_STATUS,
    Progress,
    latest_progress,
    post_job,
    wait_for_outcome,
    write_progress,
)
from oada_jobs.testing import EmbeddedServer

from .conftest import make_service


async def test_progress_is_written_as_updates_and_read_back(
    server: EmbeddedServer, oada: OADAClient, name: str
) -> None:
    halfway = anyio.Event()
    go_on = anyio.Event()

    async def copy(job: Job[Json], ctx: WorkerContext) -> Json:
        await ctx.progress(0.25)
        await ctx.progress(0.5, "half of the files copied")
        halfway.set()
        await go_on.wait()
        await write_progress(ctx, 1, "all copied")
        return {"copied": 4}

    service = make_service(server, name)
    service.on("copy", 10, copy)
    async with service:
        job_id = await post_job(oada, name, "copy")
        with anyio.fail_after(15):
            await halfway.wait()
        running = (await oada.get(f"/{job_id}")).data
        assert running["status"] == "running"
        now = latest_progress(running)
        assert now is not None
        assert (now.fraction, now.message) == (0.5, "half of the files copied")
        go_on.set()
        done = await wait_for_outcome(oada, job_id, timeout=15)
    assert done.status == "success"
    final = latest_progress(done)
    assert final == Progress(1.0, "all copied", final.time if final else None)
    metas = [u["meta"] for u in done.updates.values() if u["status"] == PROGRESS_STATUS]
    assert metas == [
        {"fraction": 0.25},
        {"fraction": 0.5, "message": "half of the files copied"},
        {"fraction": 1.0, "message": "all copied"},
    ]


@pytest.mark.parametrize("fraction", [-0.1, 1.5, math.nan, math.inf, True, "0.5", None])
async def test_bad_fractions_are_refused_before_writing(fraction: Any) -> None:
    # No client at all: the check comes before any request.
    ctx = cast(WorkerContext, SimpleNamespace(log=None, oada=None, job_id="resources/x"))
    with pytest.raises(ValueError, match="expected a progress fraction from 0 to 1"):
        await write_progress(ctx, fraction)


async def test_a_message_must_be_text() -> None:
    ctx = cast(WorkerContext, SimpleNamespace(log=None, oada=None, job_id="resources/x"))
    with pytest.raises(TypeError, match="expected the progress message as text"):
        await write_progress(ctx, 0.5, 42)  # type: ignore[arg-type]


def test_latest_progress_skips_malformed_updates() -> None:
    body = {
        "updates": {
            "a": {"status": "progress", "time": "t1", "meta": {"fraction": 0.2, "message": "ok"}},
            "b": {"status": "progress", "meta": {"fraction": 7}},
            "c": {"status": "progress", "meta": "not an object"},
            "d": {"status": "sending", "meta": {"fraction": 0.9}},
            "e": "junk",
        }
    }
    assert latest_progress(body) == Progress(0.2, "ok", "t1")
    assert latest_progress({"updates": []}) is None
    assert latest_progress({}) is None
