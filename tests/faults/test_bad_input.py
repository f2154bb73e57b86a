"""Bad input among good jobs: each bad job ends in the failure list with a clear
message (or, if it is not even a list entry, is left alone with a warning), and
the service keeps running and processes the good jobs around it."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import anyio
import pytest
from pydantic import BaseModel

from oada_jobs import Job, ServiceState, WorkerContext
from oada_jobs._ksuid import ksuid
from oada_jobs.client import OADAClient
from oada_jobs.testing import embedded_server
from oada_jobs.tree import JOBS_TYPE

from .helpers import (
    LAYOUT,
    collect,
    job_keys,
    make_service,
    pending_path,
    post_jobs,
    service_name,
)


class EmailConfig(BaseModel):
    to: str
    n: int


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": True}
    for _ in range(depth):
        value = {"x": value}
    return value


async def wait_pending_only(oada: OADAClient, name: str, left: set[str], timeout: float) -> None:
    """Wait (watching) until the pending list holds exactly the keys in *left*."""
    path = pending_path(name)
    with anyio.fail_after(timeout):
        response = await oada.get(path)
        if job_keys(response.data) == left:
            return
        async with oada.watch(path, rev=response.rev) as changes:
            async for _change in changes:
                if job_keys((await oada.get(path)).data) == left:
                    return


@pytest.mark.slow
async def test_bad_jobs_fail_clearly_and_good_ones_run(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="oada_jobs")
    name = service_name()

    async def noop(job: Job[Any], ctx: WorkerContext) -> Any:
        return {"n": job.config.get("n")}

    async def email(job: Job[EmailConfig], ctx: WorkerContext) -> Any:
        return {"n": job.config.n}

    async with (
        embedded_server(subprocess=True) as server,
        OADAClient(server.url, server.token) as oada,
    ):
        service = make_service(name, server, concurrency=10, invalid_job_wait=0.2)
        service.on("noop", 10, noop)
        service.on("email", 10, email)
        async with service:
            good = await post_jobs(oada, name, 20)

            bad: dict[str, tuple[object, str | None, str]] = {
                # key: (body, content type, expected text in the failure message)
                "missing-type": ({"service": name, "config": {}}, None, "'type' is missing"),
                "missing-service": ({"type": "noop"}, None, "'service' is missing"),
                "both-missing": ({"config": {"a": 1}}, None, "'service' is missing"),
                "empty-object": ({}, None, "'service' is missing"),
                "type-not-string": ({"service": name, "type": 5}, None, "'type' must be"),
                "config-not-object": (
                    {"service": name, "type": "noop", "config": [1, 2]},
                    None,
                    "'config' must be an object",
                ),
                "unknown-type": (
                    {"service": name, "type": "no-such-type"},
                    None,
                    "no work function is registered for job type 'no-such-type'",
                ),
                "invalid-config": (
                    {"service": name, "type": "email", "config": {"n": "x"}},
                    None,
                    "job config does not match EmailConfig",
                ),
                "not-json": (b"\x00\x01 this is not JSON", "text/plain", "is not a job"),
            }
            ids: dict[str, str] = {}
            for label, (body, content_type, _) in bad.items():
                key = ksuid()
                ids[label] = key
                if isinstance(body, bytes):
                    await oada.put(f"/resources/{key}", body, content_type=content_type)
                else:
                    await oada.put(f"/resources/{key}", body, content_type=JOBS_TYPE)
            # Jobs that are fine although unusual.
            huge_key, deep_key = ksuid(), ksuid()
            await oada.put(
                f"/resources/{huge_key}",
                {"service": name, "type": "noop", "config": {"n": -1, "blob": "x" * 4_000_000}},
                content_type=JOBS_TYPE,
            )
            await oada.put(
                f"/resources/{deep_key}",
                {"service": name, "type": "noop", "config": {"n": -2, "deep": nested(40)}},
                content_type=JOBS_TYPE,
            )
            missing_key = ksuid()
            links: dict[str, Any] = {key: {"_id": f"resources/{key}"} for key in ids.values()}
            links[huge_key] = {"_id": f"resources/{huge_key}"}
            links[deep_key] = {"_id": f"resources/{deep_key}"}
            links[missing_key] = {"_id": f"resources/{missing_key}"}  # no such resource
            # Ids no request can read: filed as failed like a missing one,
            # never requested (a link into a resource, one no client can send).
            links["unreadable"] = {"_id": "resources/.."}
            links["into-a-job"] = {"_id": f"resources/{missing_key}/config"}
            links["space-id"] = {"_id": "resources/a b"}
            # List entries that are not links at all: left alone, with a warning.
            not_links = {
                "entry-number": 5,
                "entry-string": "resources/abc",
                "entry-no-id": {"service": name, "type": "noop"},
                "entry-bad-id": {"_id": "users/someone"},
                "entry-null": None,
            }
            await oada.put(pending_path(name), {**links, **not_links}, content_type=JOBS_TYPE)
            # Good jobs posted after the bad ones still run.
            good += await post_jobs(oada, name, 20, first=20)

            left = set(not_links)  # null is stored as null, as OADA does
            try:
                await wait_pending_only(oada, name, left, timeout=30)
            except TimeoutError:
                still = job_keys((await oada.get(pending_path(name))).data) - left
                named = {v: k for k, v in ids.items()}
                named |= {huge_key: "huge", deep_key: "deep", missing_key: "missing"}
                raise AssertionError(
                    f"still pending: {sorted(named.get(k, k) for k in still)}"
                ) from None
            assert service.state is ServiceState.RUNNING

        outcome = await collect(oada, name, [*good, *ids.values(), huge_key, deep_key])
    assert set(good) | {huge_key, deep_key} <= outcome.success
    assert set(ids.values()) | {missing_key} <= outcome.failure
    assert not (outcome.success & outcome.failure)
    for label, (_, _, expected) in bad.items():
        body = outcome.bodies[ids[label]]
        result = body.get("result")
        if label == "not-json":
            # A binary resource cannot take a JSON result; it is filed as failed.
            assert ids[label] in outcome.failure
            continue
        assert body.get("status") == "failure", (label, body)
        assert isinstance(result, Mapping), (label, result)
        assert expected in result["message"], (label, result["message"])
    text = caplog.text
    for key in not_links:
        assert f"skipping list entry {key!r}" in text, key
    assert f"links to resources/{missing_key}, which does not exist" in text
    assert "links to resources/.., which no request can read" in text
    assert f"links to resources/{missing_key}/config, which no request can read" in text
    assert "links to resources/a b, which no request can read" in text
    assert outcome.bodies[huge_key]["result"] == {"n": -1}
    assert outcome.bodies[deep_key]["result"] == {"n": -2}


@pytest.mark.slow
async def test_bad_queue_entries_are_ignored_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="oada_jobs")
    name = service_name()

    async def noop(job: Job[Any], ctx: WorkerContext) -> Any:
        return {"n": job.config.get("n")}

    async with (
        embedded_server(subprocess=True) as server,
        OADAClient(server.url, server.token) as oada,
    ):
        service = make_service(name, server)
        service.on("noop", 10, noop)
        async with service:
            entries: dict[str, Any] = {
                "no-token": {"domain": server.url},
                "no-domain": {"token": "t0ken-no-domain"},
                "bad-domain": {"domain": "not a domain", "token": "t0ken-bad-domain"},
                "bad-scheme": {"domain": "ftp://127.0.0.1:1", "token": "t0ken-bad-scheme"},
                "token-number": {"domain": server.url, "token": 5},
                "not-object": "https://example.org",
                "refused": {"domain": server.url, "token": "t0ken-refused"},
                # Nothing listens there: the queue keeps retrying.
                "unreachable": {"domain": "http://127.0.0.1:9", "token": "t0ken-unreachable"},
            }
            await oada.put(LAYOUT.queues_path(name), entries, content_type=JOBS_TYPE)
            with anyio.fail_after(20):
                await service.wait_for_queues(
                    lambda queues: "refused" in queues and "unreachable" in queues
                )
                while "token was refused" not in caplog.text or "retrying" not in caplog.text:
                    await anyio.sleep(0.05)
            assert set(service.queues) == {"_default", "refused", "unreachable"}
            keys = await post_jobs(oada, name, 10)
            await wait_pending_only(oada, name, set(), timeout=30)
            assert service.state is ServiceState.RUNNING
        outcome = await collect(oada, name)
    assert set(keys) <= outcome.success
    text = caplog.text
    for key in ("no-token", "no-domain", "bad-domain", "bad-scheme", "token-number", "not-object"):
        assert f"queue entry {key!r} is ignored" in text, key
    assert "'token' is missing" in text
    assert "'domain' is missing" in text
    assert "'domain' is malformed" in text
    # No queue token ever reaches the log.
    assert "t0ken" not in text
