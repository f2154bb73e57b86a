"""Hostile keys in a job list: every key reaches a request path through one
escaping function, and a key no request can name is warned about, never filed
into the wrong place nor retried every sweep."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import anyio
import pytest

from oada_jobs import InvalidKey, Job, NotFound, Service, WorkerContext
from oada_jobs.client import OADAClient
from oada_jobs.job import iso, utc_now
from oada_jobs.replicas import workers_path, workers_tree
from oada_jobs.requester import detect_layout, post_job
from oada_jobs.tree import JOBS_TYPE, get_layout, path_segment, resource_path

from .conftest import LogWaiter, key_of, wait_for_status

CLASSIC = get_layout("classic")


async def ok(job: Job[Any], ctx: WorkerContext) -> Any:
    return {"ran": job.key}


def test_path_segment_escapes_pointer_characters_and_refuses_the_unnameable() -> None:
    assert path_segment("a/b") == "a~1b"
    assert path_segment("~1") == "~01"
    assert path_segment("x:y@z!$&'()*+,;=") == "x:y@z!$&'()*+,;="
    assert path_segment("50%off") == "50%off"  # sent and matched as it is
    for key in ("", ".", "..", "a b", "a?b", "a#b", "tab\t", "nl\n", "\x00", "é"):
        with pytest.raises(InvalidKey):
            path_segment(key)
    assert resource_path("resources/a~b") == "/resources/a~0b"
    for job_id in ("resources/a/b", "resources/..", "resources/", "bookmarks/x", "resources/a b"):
        with pytest.raises(InvalidKey):
            resource_path(job_id)


async def _link(oada: OADAClient, name: str, links: dict[str, str]) -> None:
    await oada.put(
        CLASSIC.pending_path(name),
        {key: {"_id": job_id} for key, job_id in links.items()},
        tree=CLASSIC.tree,
    )


async def _job(oada: OADAClient, name: str, **extra: Any) -> str:
    body = {"service": name, "type": "ok", "config": {}, **extra}
    return await oada.create_resource(body, content_type=JOBS_TYPE)


async def test_a_key_with_a_slash_never_reaches_into_another_job(
    oada: OADAClient, make_service: Callable[..., Service], name: str
) -> None:
    # A job waiting for tomorrow, and a second entry whose key names a path
    # into the first one's link.
    later = iso(utc_now() + timedelta(hours=1))
    victim = await _job(oada, name, options={"notBefore": later})
    attacker = await _job(oada, name)
    await _link(oada, name, {key_of(victim): victim, f"{key_of(victim)}/type": attacker})
    tilde = await _job(oada, name)
    percent = await _job(oada, name)
    await _link(oada, name, {"a~1b": tilde, "a%2Fb": percent})
    service = make_service()
    service.on("ok", 10, ok)
    async with service:
        assert (await wait_for_status(oada, attacker))["status"] == "success"
        assert (await wait_for_status(oada, tilde))["status"] == "success"
        assert (await wait_for_status(oada, percent))["status"] == "success"
        with anyio.fail_after(10):
            while True:
                pending = (await oada.get(CLASSIC.pending_path(name))).data
                gone = {f"{key_of(victim)}/type", "a~1b", "a%2Fb"}.isdisjoint(pending)
                if gone:
                    break
                await anyio.sleep(0.05)
    assert (await oada.get(resource_path(victim))).data["type"] == "ok"
    assert key_of(victim) in pending
    success = (await oada.get(CLASSIC.day_index_path(name, "success", utc_now().date()))).data
    assert success[f"{key_of(victim)}/type"]["_id"] == attacker
    assert success["a~1b"]["_id"] == tilde
    assert success["a%2Fb"]["_id"] == percent


@pytest.mark.parametrize("key", ["", ".", "..", "a b", "q?x", "h#x", "c\x01", "é"])
async def test_a_key_no_request_can_name_is_warned_about_once(
    oada: OADAClient,
    make_service: Callable[..., Service],
    name: str,
    logs: LogWaiter,
    key: str,
) -> None:
    bad = await _job(oada, name)
    good = await _job(oada, name)
    await _link(oada, name, {key: bad, key_of(good): good})
    service = make_service(sweep_interval=0.05)
    service.on("ok", 10, ok)
    async with service:
        assert (await wait_for_status(oada, good))["status"] == "success"
        # About ten sweeps pass, each reading the list again.
        await anyio.sleep(0.5)
        assert service.state.value == "running"
    pending = (await oada.get(CLASSIC.pending_path(name))).data
    # The list itself (and its link in the service) is intact.
    assert pending[key]["_id"] == bad
    assert key_of(good) not in pending
    assert (await oada.get(resource_path(bad))).data.get("status") is None
    warnings = [r for r in logs.records if "skipping list entry" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "no OADA request can name the key" in warnings[0].getMessage()
    assert not [r for r in logs.records if r.exc_info]


async def test_an_entry_that_is_not_a_link_is_warned_about_once_not_every_sweep(
    oada: OADAClient, make_service: Callable[..., Service], name: str, logs: LogWaiter
) -> None:
    await oada.put(CLASSIC.pending_path(name), {"number": 5, "no-id": {"a": 1}}, tree=CLASSIC.tree)
    service = make_service(sweep_interval=0.05)
    async with service:
        await anyio.sleep(0.5)  # about ten sweeps
    warnings = [r.getMessage() for r in logs.records if "skipping list entry" in r.getMessage()]
    assert len(warnings) == 2, warnings


async def test_a_job_linked_into_another_resource_is_moved_aside_untouched(
    oada: OADAClient, make_service: Callable[..., Service], name: str
) -> None:
    victim = await post_job(oada, "elsewhere", "x", {"keep": True})
    await _link(oada, name, {"into": f"{victim}/config"})
    service = make_service()
    async with service:
        with anyio.fail_after(10):
            while "into" in (await oada.get(CLASSIC.pending_path(name))).data:
                await anyio.sleep(0.05)
    failure = (await oada.get(CLASSIC.day_index_path(name, "failure", utc_now().date()))).data
    assert failure["into"]["_id"] == f"{victim}/config"
    body = (await oada.get(resource_path(victim))).data
    assert body["config"] == {"keep": True}
    assert "status" not in body


async def test_a_classic_service_never_takes_a_list_of_the_pending_layout_for_a_job(
    oada: OADAClient,
    make_service: Callable[..., Service],
    name: str,
    logs: LogWaiter,
) -> None:
    service = make_service(sweep_interval=0.05)
    service.on("ok", 10, ok)
    async with service:
        # Posted with the wrong layout: it lands in jobs/pending, a sub-list.
        lost = await post_job(oada, name, "ok", layout="pending")
        good = await post_job(oada, name, "ok")
        assert (await wait_for_status(oada, good))["status"] == "success"
        await logs.wait_for(lambda r: "job list of the other layout" in r.getMessage())
        await anyio.sleep(0.3)  # a few sweeps
    pending = (await oada.get(CLASSIC.pending_path(name))).data
    assert "pending" in pending
    listed = (await oada.get(f"{CLASSIC.pending_path(name)}/pending")).data
    assert key_of(lost) in listed
    failure_day = CLASSIC.day_index_path(name, "failure", utc_now().date())
    with pytest.raises(NotFound):
        await oada.get(failure_day)
    warned = [r for r in logs.records if "job list of the other layout" in r.getMessage()]
    assert len(warned) == 1


@pytest.mark.parametrize("layout", ["classic", "pending"])
async def test_a_running_service_notes_its_layout_for_requesters(
    oada: OADAClient, make_service: Callable[..., Service], name: str, layout: Any
) -> None:
    assert (await detect_layout(oada, name))[0] is None
    assert "has ever run" in (await detect_layout(oada, name))[1]
    async with make_service(layout=layout):
        pass
    assert (await detect_layout(oada, name))[0] == layout


async def test_the_layout_of_a_service_that_notes_none_is_read_from_its_lists(
    oada: OADAClient, name: str
) -> None:
    pending = get_layout("pending")
    await oada.ensure(pending.pending_path(name), {}, tree=pending.tree)
    assert (await detect_layout(oada, name))[0] == "pending"
    other = f"{name}-c"
    await oada.ensure(CLASSIC.pending_path(other), {}, tree=CLASSIC.tree)
    assert (await detect_layout(oada, other))[0] == "classic"


async def test_replica_keys_reach_their_delete_paths_escaped(
    oada: OADAClient, make_service: Callable[..., Service], name: str
) -> None:
    # Keys of replicas that died an hour ago, with the pointer characters a
    # member key may hold; and this replica's own key holds one too.
    dead = {"worker": "gone", "expires": iso(utc_now() - timedelta(hours=1))}
    hostile = ["dead~1x", "dead~0y", "dead~01"]
    await oada.ensure(workers_path(name), {}, tree=workers_tree(CLASSIC))
    await oada.put(workers_path(name), dict.fromkeys(hostile, dead), content_type=JOBS_TYPE)
    service = make_service(member_lease=0.3)
    service.worker_id = "host~1a:1:x~0y"
    async with service:
        # Its own key is announced as it is, and the dead ones are deleted.
        with anyio.fail_after(10):
            while True:
                listing = (await oada.get(workers_path(name))).data
                if not set(hostile) & set(listing) and "host~1a-1-x~0y" in listing:
                    break
                await anyio.sleep(0.05)
    # It deleted its own key as it stopped.
    listing = (await oada.get(workers_path(name))).data
    assert [key for key in listing if not key.startswith("_")] == []


async def test_replicas_divide_jobs_under_keys_with_pointer_characters(
    oada: OADAClient, make_service: Callable[..., Service], name: str
) -> None:
    ran: dict[int, list[str]] = {0: [], 1: []}

    def recorder(replica: int) -> Callable[[Job[Any], WorkerContext], Any]:
        async def record(job: Job[Any], ctx: WorkerContext) -> Any:
            ran[replica].append(ctx.job_id)

        return record

    replicas = [make_service(sweep_interval=0.1) for _ in range(2)]
    for n, replica in enumerate(replicas):
        replica.on("ok", 10, recorder(n))
    async with replicas[0], replicas[1]:
        with anyio.fail_after(10):
            while not all(len(r.shares.members) == 2 for r in replicas):  # type: ignore[union-attr]
                await anyio.sleep(0.02)
        keys = [f"{stem}{n}" for n in range(6) for stem in ("a~1b", "c/d", "e%2Ff", "g~0h", "~")]
        links = {key: await _job(oada, name) for key in keys}
        await _link(oada, name, links)
        for job_id in links.values():
            assert (await wait_for_status(oada, job_id))["status"] == "success"
    # Divided: each replica ran its share, and each job ran once.
    assert ran[0], ran
    assert ran[1], ran
    assert sorted(ran[0] + ran[1]) == sorted(links.values())
    success = (await oada.get(CLASSIC.day_index_path(name, "success", utc_now().date()))).data
    assert {key: success[key]["_id"] for key in keys} == links
