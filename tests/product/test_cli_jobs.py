"""``oada-jobs jobs``: list, show, post, retry and cancel against the embedded server."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from product_helpers import CLI
from prometheus_client import CollectorRegistry

from oada_jobs import Job, JobError, NotFound, Service, WorkerContext
from oada_jobs.cli._job_posting import wait_if_asked
from oada_jobs.client import OADAClient
from oada_jobs.testing import EmbeddedServer, post_job, wait_for_job

FAST: dict[str, Any] = {"sweep_interval": 3600, "retry_initial": 0.05, "shutdown_grace": 2}


@pytest.fixture
def upstream() -> dict[str, bool]:
    """Whether ``fail`` jobs have been fixed."""
    return {"fixed": False}


@pytest.fixture
async def service(server: EmbeddedServer, upstream: dict[str, bool]) -> AsyncIterator[Service]:
    """Service ``svc``: ``ok`` jobs succeed, ``fail`` jobs fail until ``upstream`` is fixed."""
    svc = Service(
        "svc", domain=server.url, token=server.token, metrics_registry=CollectorRegistry(), **FAST
    )

    async def ok(job: Job[Any], ctx: WorkerContext) -> Any:
        return {"echo": job.config}

    async def fail(job: Job[Any], ctx: WorkerContext) -> Any:
        if not upstream["fixed"]:
            raise JobError("upstream said no", "upstream")
        return {"fixed": True}

    svc.on("ok", 5, ok)
    svc.on("fail", 5, fail)
    async with svc:
        yield svc


async def test_post_then_show_and_list(cli: CLI, oada: OADAClient) -> None:
    posted = await cli("jobs", "post", "ok", "--config", '{"n": 1}', "--json")
    assert posted.exit_code == 0, posted
    job_id = posted.json()["id"]
    key = posted.json()["key"]
    assert job_id == f"resources/{key}"

    stored = (await oada.get(f"/{job_id}")).data
    assert stored["service"] == "svc"
    assert stored["type"] == "ok"
    assert stored["config"] == {"n": 1}
    pending = (await oada.get("/bookmarks/services/svc/jobs")).data
    assert pending[key] == {"_id": job_id}

    shown = await cli("jobs", "show", key, "--json")
    assert shown.exit_code == 0, shown
    assert shown.json()["config"] == {"n": 1}
    assert "_meta" not in shown.json()

    listed = await cli("jobs", "list", "--json")
    assert listed.exit_code == 0, listed
    assert [row["id"] for row in listed.json()["pending"]["jobs"]] == [job_id]
    assert listed.json()["pending"]["jobs"][0]["status"] == "pending"

    table = await cli("jobs", "list")
    assert table.exit_code == 0
    assert "pending: 1" in table.stdout


async def test_show_prints_the_latest_progress(cli: CLI, oada: OADAClient) -> None:
    posted = await cli("jobs", "post", "ok", "--json")
    job_id = posted.json()["id"]
    updates = {
        "1": {"status": "progress", "time": "2026-01-01T00:00:00Z", "meta": {"fraction": 0.25}},
        "2": {
            "status": "progress",
            "time": "2026-01-01T00:00:05Z",
            "meta": {"fraction": 0.5, "message": "half the rows"},
        },
    }
    await oada.put(f"/{job_id}", {"updates": updates})

    shown = await cli("jobs", "show", job_id)
    assert shown.exit_code == 0, shown
    assert "progress: 50% - half the rows (at 2026-01-01T00:00:05Z)" in shown.stderr
    # stdout is the job, as JSON, and nothing else.
    assert json.loads(shown.stdout)["updates"]["2"]["meta"]["fraction"] == 0.5
    as_json = await cli("jobs", "show", job_id, "--json")
    assert "progress:" not in as_json.stdout
    assert as_json.json()["updates"]["2"]["meta"]["fraction"] == 0.5


async def test_post_reads_config_from_a_file_and_stdin(cli: CLI, tmp_path: Any) -> None:
    (tmp_path / "config.json").write_text('{"from": "file"}')
    from_file = await cli("jobs", "post", "ok", "--config", "@config.json", "--json")
    assert from_file.exit_code == 0, from_file
    from_stdin = await cli("jobs", "post", "ok", "--config", "-", "--json", input='{"a": [1]}')
    assert from_stdin.exit_code == 0, from_stdin
    shown = await cli("jobs", "show", from_stdin.json()["id"], "--json")
    assert shown.json()["config"] == {"a": [1]}


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ("@missing.json", "cannot read --config"),
    ],
)
async def test_bad_config_posts_nothing(
    cli: CLI, oada: OADAClient, config: str, message: str
) -> None:
    result = await cli("jobs", "post", "ok", "--config", config)
    assert result.exit_code == 2, result
    assert message in result.stderr
    listed = await cli("jobs", "list", "--json")
    assert listed.json()["pending"]["jobs"] == []


async def test_post_wait_reports_success_and_failure(cli: CLI, service: Service) -> None:
    good = await cli("jobs", "post", "ok", "-c", '{"x": 2}', "--wait", "--json")
    assert good.exit_code == 0, good
    assert good.json()["status"] == "success"
    assert good.json()["result"] == {"echo": {"x": 2}}

    bad = await cli("jobs", "post", "fail", "--wait", "--json")
    assert bad.exit_code == 1, bad
    assert bad.json()["status"] == "failure"
    assert bad.json()["result"]["failType"] == "upstream"
    assert "finished with status failure" in bad.stderr


async def test_list_shows_finished_jobs_of_the_latest_day(cli: CLI, service: Service) -> None:
    good = (await cli("jobs", "post", "ok", "--wait", "--json")).json()
    bad = (await cli("jobs", "post", "fail", "--wait", "--json")).json()
    with anyio.fail_after(10):
        while True:
            listed = (await cli("jobs", "list", "--json")).json()
            if not listed["pending"]["jobs"]:
                break
    assert [row["id"] for row in listed["success"]["jobs"]] == [good["id"]]
    assert [row["id"] for row in listed["failure"]["jobs"]] == [bad["id"]]
    assert listed["success"]["day"] == listed["failure"]["day"]
    assert listed["layout"] == "classic"

    other_day = (await cli("jobs", "list", "--day", "2001-01-01", "--json")).json()
    assert other_day["success"]["jobs"] == []
    assert other_day["failure"]["jobs"] == []


async def test_retry_posts_the_failed_config_again(
    cli: CLI, service: Service, upstream: dict[str, bool]
) -> None:
    failed = (await cli("jobs", "post", "fail", "-c", '{"to": "x"}', "--wait", "--json")).json()
    assert failed["status"] == "failure"

    succeeded = (await cli("jobs", "post", "ok", "--wait", "--json")).json()
    refused = await cli("jobs", "retry", succeeded["id"])
    assert refused.exit_code == 1
    assert "not failure" in refused.stderr
    assert "--force" in refused.stderr

    upstream["fixed"] = True
    retried = await cli("jobs", "retry", failed["id"], "--wait", "--json")
    assert retried.exit_code == 0, retried
    again = retried.json()
    assert again["retryOf"] == failed["id"]
    assert again["id"] != failed["id"]
    assert again["status"] == "success"
    shown = (await cli("jobs", "show", again["id"], "--json")).json()
    assert shown["config"] == {"to": "x"}
    assert shown["type"] == "fail"
    # The failed job is left as it was.
    assert (await cli("jobs", "show", failed["id"], "--json")).json()["status"] == "failure"


async def test_cancel_marks_a_pending_job(cli: CLI, oada: OADAClient) -> None:
    job_id = (await cli("jobs", "post", "ok", "--json")).json()["id"]
    cancelled = await cli("jobs", "cancel", job_id, "--json")
    assert cancelled.exit_code == 0, cancelled
    stored = (await oada.get(f"/{job_id}")).data
    assert stored["status"] == "cancel-requested"
    assert [u["status"] for u in stored["updates"].values()] == ["cancel-requested"]


async def test_cancel_refuses_a_finished_job(cli: CLI, service: Service) -> None:
    done = (await cli("jobs", "post", "ok", "--wait", "--json")).json()
    result = await cli("jobs", "cancel", done["id"])
    assert result.exit_code == 1
    assert "already finished with status success" in result.stderr


async def test_unknown_and_malformed_jobs(cli: CLI) -> None:
    missing = await cli("jobs", "show", "resources/nope")
    assert missing.exit_code == 1
    assert "no job resources/nope" in missing.stderr
    for command in ("show", "retry", "cancel"):
        malformed = await cli("jobs", command, "resources/a/b")
        assert malformed.exit_code == 2, malformed
        assert "expected a job id" in malformed.stderr


async def test_usage_errors(cli: CLI, bare_cli: CLI) -> None:
    no_domain = await bare_cli("jobs", "list", "-s", "svc")
    assert no_domain.exit_code == 2
    assert "no OADA domain" in no_domain.stderr
    no_token = await bare_cli("jobs", "list", "-s", "svc", "-d", "http://127.0.0.1:9")
    assert no_token.exit_code == 2
    assert "no OADA token" in no_token.stderr
    no_service = await cli("jobs", "list", env={"OADA_JOBS_SERVICE": None})
    assert no_service.exit_code == 2
    assert "--service" in no_service.stderr
    bad_service = await cli("jobs", "list", "-s", "a b")
    assert bad_service.exit_code == 2
    assert "--service" in bad_service.stderr
    bad_layout = await cli("jobs", "list", "--layout", "flat")
    assert bad_layout.exit_code == 2
    assert "--layout" in bad_layout.stderr
    bad_day = await cli("jobs", "list", "--day", "yesterday")
    assert bad_day.exit_code == 2
    assert "--day" in bad_day.stderr


async def test_unreachable_server_and_refused_token(cli: CLI, server: EmbeddedServer) -> None:
    with anyio.fail_after(20):
        unreachable = await cli("jobs", "list", "-d", "http://127.0.0.1:9")
    assert unreachable.exit_code == 3, unreachable
    assert "cannot reach the OADA server at http://127.0.0.1:9" in unreachable.stderr

    refused = await cli("jobs", "list", "--token", "not-a-token")
    assert refused.exit_code == 4, refused
    assert "refused the token" in refused.stderr
    assert "not-a-token" not in refused.stderr + refused.stdout


async def test_pending_layout_is_detected(cli: CLI, server: EmbeddedServer) -> None:
    posted = await cli("jobs", "post", "ok", "--layout", "pending", "--json")
    assert posted.exit_code == 0, posted
    listed = (await cli("jobs", "list", "--json")).json()
    assert listed["layout"] == "pending"
    assert [row["id"] for row in listed["pending"]["jobs"]] == [posted.json()["id"]]


async def test_cancel_stops_a_running_job(cli: CLI, server: EmbeddedServer) -> None:
    started = anyio.Event()

    async def slow(job: Job[Any], ctx: WorkerContext) -> Any:
        started.set()
        await anyio.sleep_forever()

    svc = Service(
        "svc", domain=server.url, token=server.token, metrics_registry=CollectorRegistry(), **FAST
    )
    svc.on("slow", 60, slow)
    async with svc, OADAClient(server.url, server.token) as oada:
        job_id = (await cli("jobs", "post", "slow", "--json")).json()["id"]
        with anyio.fail_after(10):
            await started.wait()
        cancelled = await cli("jobs", "cancel", job_id)
        assert cancelled.exit_code == 0, cancelled
        job = await wait_for_job(oada, job_id, 10, filed="classic")
    assert job.status == "failure"
    assert isinstance(job.result, dict)
    assert job.result["failType"] == "cancelled"


async def test_post_writes_options_and_refuses_bad_ones(cli: CLI, oada: OADAClient) -> None:
    posted = await cli("jobs", "post", "email", "-o", '{"priority": 5, "group": "f7"}', "--json")
    assert posted.exit_code == 0, posted
    job = (await oada.get(f"/{posted.json()['id']}")).data
    assert job["options"] == {"priority": 5, "group": "f7"}

    bad = await cli("jobs", "post", "email", "-o", '{"priority": "high"}')
    assert bad.exit_code == 2, bad
    assert "--options: 'options.priority': Input should be a valid integer" in bad.stderr


async def test_retry_keeps_the_failed_jobs_options(
    cli: CLI, oada: OADAClient, service: Service, upstream: dict[str, bool]
) -> None:
    options = {"priority": 5, "group": "g-1", "uniqueKey": "u-1", "version": 2, "tries": 4}
    failed = await cli(
        "jobs", "post", "fail", "-c", '{"to": "x"}', "-o", json.dumps(options), "--wait", "--json"
    )
    assert failed.json()["status"] == "failure"
    upstream["fixed"] = True
    retried = await cli("jobs", "retry", failed.json()["id"], "--wait", "--json")
    assert retried.exit_code == 0, retried
    stored = (await oada.get(f"/{retried.json()['id']}")).data
    assert stored["options"] == options
    assert stored["config"] == {"to": "x"}


async def test_post_with_the_wrong_layout_is_refused_before_anything_is_written(
    cli: CLI, oada: OADAClient, service: Service
) -> None:
    refused = await cli("jobs", "post", "ok", "--layout", "pending")
    assert refused.exit_code == 2, refused
    assert "reads the classic layout" in refused.stderr
    assert "--layout classic" in refused.stderr
    with pytest.raises(NotFound):
        await oada.get("/bookmarks/services/svc/jobs/pending")
    # Without --layout the service's own is used.
    posted = await cli("jobs", "post", "ok", "--wait", "--json")
    assert posted.exit_code == 0, posted


async def test_post_to_a_service_that_never_ran_warns(cli: CLI) -> None:
    posted = await cli("jobs", "post", "ok", "-s", "svc-typo", "--json")
    assert posted.exit_code == 0, posted
    assert "no service named 'svc-typo' has ever run" in posted.stderr
    assert "check the service name" in posted.stderr


async def test_post_wait_says_the_id_first_shows_progress_and_why_it_failed(
    cli: CLI, server: EmbeddedServer
) -> None:
    svc = Service(
        "svc-progress",
        domain=server.url,
        token=server.token,
        metrics_registry=CollectorRegistry(),
        **FAST,
    )

    async def slow(job: Job[Any], ctx: WorkerContext) -> Any:
        await ctx.progress(0.5, "half the rows")
        raise JobError("mailbox full", "smtp-rejected")

    svc.on("slow", 5, slow)
    async with svc:
        shown = await cli("jobs", "post", "slow", "-s", "svc-progress", "--wait")
        as_json = await cli("jobs", "post", "slow", "-s", "svc-progress", "--wait", "--json")
    assert shown.exit_code == 1, shown
    lines = shown.stdout.splitlines()
    assert lines[0].startswith("posted 'slow' job as resources/")
    assert lines[1] == "waiting up to 60 s for it to finish"
    assert "progress: 50% - half the rows" in shown.stderr
    assert "mailbox full" in shown.stderr
    assert "(fail type smtp-rejected)" in shown.stderr
    # Scripts get one JSON document on stdout; the id comes first on stderr.
    assert as_json.exit_code == 1, as_json
    job_id = as_json.json()["id"]
    assert as_json.stderr.splitlines()[0] == f"posted {job_id}; waiting up to 60 s"
    assert "mailbox full (fail type smtp-rejected)" in as_json.stderr


async def test_list_json_has_one_shape_for_every_list(cli: CLI, service: Service) -> None:
    await cli("jobs", "post", "ok", "--wait")
    await cli("jobs", "post", "fail", "--wait")
    posted = await cli("jobs", "post", "ok", "-s", "svc-idle")
    listed = (await cli("jobs", "list", "--json")).json()
    idle = (await cli("jobs", "list", "-s", "svc-idle", "--json")).json()
    for lists in (listed, idle):
        for name in ("pending", "success", "failure"):
            assert set(lists[name]) == {"day", "jobs"}, (name, lists[name])
            assert isinstance(lists[name]["jobs"], list)
    assert listed["pending"]["day"] is None
    assert [row["id"] for row in idle["pending"]["jobs"]] == [posted.stdout.split()[4]]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ('{"timeout": NaN}', "NaN is not a JSON value"),
        ('{"timeout": Infinity}', "Infinity is not a JSON value"),
        ('{"timeout": 1e999}', "the number 1e999 is out of range"),
        ("[" * 100_000, "nested too deeply"),
    ],
)
async def test_config_that_no_request_can_carry_is_a_clear_error(
    cli: CLI, config: str, message: str
) -> None:
    result = await cli("jobs", "post", "ok", "--config", config)
    assert result.exit_code == 2, result
    assert message in result.stderr
    assert "Traceback" not in result.stderr


async def test_post_wait_returns_once_the_job_is_filed(
    cli: CLI, oada: OADAClient, service: Service
) -> None:
    for _ in range(3):
        done = (await cli("jobs", "post", "ok", "--wait", "--json")).json()
        key = done["id"].removeprefix("resources/")
        # Off the pending list, which the runner does last, after filing.
        with pytest.raises(NotFound):
            await oada.get(f"/bookmarks/services/svc/jobs/{key}")
        listed = (await cli("jobs", "list", "--json")).json()
        assert done["id"] in [row["id"] for row in listed["success"]["jobs"]]


async def test_wait_reports_a_finished_job_its_service_never_filed(oada: OADAClient) -> None:
    # The service wrote the outcome and stopped before taking the job off
    # its pending list: the outcome is what --wait waited for.
    job_id = await post_job(oada, "svc", "ok", {})
    await oada.put(f"/{job_id}", {"status": "success", "result": {"done": True}})
    finished = await wait_if_asked(oada, job_id, True, 0.5, layout="classic")
    assert finished is not None
    assert (finished.status, finished.result) == ("success", {"done": True})


async def test_list_reads_only_real_days_of_a_day_index(
    cli: CLI, oada: OADAClient, service: Service
) -> None:
    done = (await cli("jobs", "post", "ok", "--wait", "--json")).json()
    # A hostile key in the day index sorts after every real day.
    await oada.put(
        "/bookmarks/services/svc/jobs-success/day-index",
        {"9999~1..": {"_id": done["id"]}},
        content_type="application/vnd.oada.service.jobs.1+json",
    )
    listed = await cli("jobs", "list", "--json")
    assert listed.exit_code == 0, listed
    assert listed.json()["success"]["day"] != "9999~1.."
    assert [row["id"] for row in listed.json()["success"]["jobs"]] == [done["id"]]


async def test_pause_and_resume_a_type_then_everything(
    cli: CLI, service: Service, oada: OADAClient
) -> None:
    paused = await cli("jobs", "pause", "--type", "ok", "--json")
    assert paused.exit_code == 0, paused
    assert paused.json()["paused"] == {"types": {"ok": True}}
    with anyio.fail_after(10):
        while not service.control.paused("ok"):
            await anyio.sleep(0.02)
    assert not service.control.paused("fail")

    assert (await cli("jobs", "pause")).exit_code == 0
    with anyio.fail_after(10):
        while not service.control.paused_all:
            await anyio.sleep(0.02)

    resumed = await cli("jobs", "resume")
    assert resumed.exit_code == 0, resumed
    assert "resumed every job type of svc" in resumed.stdout
    with anyio.fail_after(10):
        while service.control.paused("ok") or service.control.paused_all:
            await anyio.sleep(0.02)
    done = await cli("jobs", "post", "ok", "--wait", "--json")
    assert done.json()["status"] == "success"

    bad = await cli("jobs", "pause", "--type", "")
    assert bad.exit_code == 1
    assert "job type ''" in bad.stderr
