"""Reports a service makes on a schedule: stored in OADA, mailed through abalonemail."""

from __future__ import annotations

import base64
import csv
import io
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from oada_jobs import JobFailed, Service, run_job
from oada_jobs.client import OADAClient
from oada_jobs.cron import CronScheduler, cron_job_key, entries_of, entry_named, post_now
from oada_jobs.exceptions import NotFound
from oada_jobs.reports import CSV_COLUMNS, ReportConfig, report_path
from oada_jobs.requester import post_job, wait_for_outcome
from oada_jobs.testing import EmbeddedServer
from oada_jobs.tree import JOBS_TYPE, get_layout

from .conftest import make_service

DAY = date(2026, 1, 2)
TICK = datetime(2026, 1, 3, 6, 0, tzinfo=UTC)
MAIL = {"from": "jobs@example.org", "to": ["ops@example.org"]}


async def file_job(
    oada: OADAClient,
    service: str,
    layout: Any,
    day: date,
    key: str,
    type: str | None,
    status: str = "success",
) -> None:
    """File a finished job (type None: a link to nothing) into *day*'s list by hand."""
    if type is not None:
        result: dict[str, Any] = {"ok": True}
        if status == "failure":
            result = {"name": "JobError", "message": "no", "failType": "upstream"}
        job = {
            "service": service,
            "type": type,
            "config": {"to": f"{key}@example.org"},
            "status": status,
            "tries": 1,
            "result": result,
            "updates": {
                "a1": {"status": "started", "time": f"{day}T10:00:00.000Z"},
                "a2": {"status": status, "time": f"{day}T10:00:02.000Z"},
            },
        }
        await oada.put(f"/resources/{key}", job, content_type=JOBS_TYPE)
    chosen = get_layout(layout)
    path = chosen.day_index_path(service, status, day)
    await oada.put(path, {key: {"_id": f"resources/{key}", "_rev": 0}}, tree=chosen.tree)


def unstarted(name: str) -> Service:
    """A service that is never started (registration only: no server needed)."""
    return Service(
        name, domain="http://127.0.0.1:9", token="t", metrics_registry=CollectorRegistry()
    )


def rows_of(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


async def test_a_tick_stores_the_report_and_mails_the_csv(
    server: EmbeddedServer, oada: OADAClient, name: str
) -> None:
    k = name[-6:]
    await file_job(oada, name, "classic", DAY, f"ok1-{k}", "email")
    await file_job(oada, name, "classic", DAY, f"ok2-{k}", "email")
    await file_job(oada, name, "classic", DAY, f"bad-{k}", "email", "failure")
    await file_job(oada, name, "classic", DAY, f"gone-{k}", None)
    # A job the service may not read (another user's resource) still counts.
    async with OADAClient(server.url, "abc") as other:
        hidden = await other.create_resource({"service": name, "type": "email"})
    chosen = get_layout("classic")
    await oada.put(
        chosen.day_index_path(name, "failure", DAY),
        {f"hidden-{k}": {"_id": hidden, "_rev": 0}},
        tree=chosen.tree,
    )
    # Outside the period: the tick's own day.
    await file_job(oada, name, "classic", TICK.date(), f"late-{k}", "email")
    service = make_service(server, name)
    service.add_report("daily", "0 6 * * *", email=MAIL)
    async with service:
        entry = entry_named(service, "daily")
        job_id = await CronScheduler(oada, name, entries_of(service)).post_tick(entry, TICK)
        assert job_id is not None
        job = await wait_for_outcome(oada, job_id, timeout=20)
    assert job.status == "success", job.result
    assert job.type == "report-daily"
    result = job.result
    assert isinstance(result, dict)
    assert (result["report"], result["from"], result["to"]) == ("daily", "2026-01-02", "2026-01-02")
    assert result["jobs"] == 5
    counts = {(row["type"], row["status"]): row["count"] for row in result["summary"]}
    assert counts == {
        ("?", "failure"): 1,
        ("?", "success"): 1,
        ("email", "failure"): 1,
        ("email", "success"): 2,
    }
    key = cron_job_key(name, "daily", TICK)
    assert result["stored"] == report_path(name, "daily", TICK.date(), key)
    assert result["stored"].startswith(f"/bookmarks/services/{name}/reports/daily/day-index/")

    stored = (await oada.get(result["stored"])).data
    assert stored["summary"] == result["summary"]
    assert (stored["from"], stored["to"], stored["jobs"]) == ("2026-01-02", "2026-01-02", 5)
    assert stored["job"]["_id"] == job_id
    rows = rows_of(stored["csv"])
    assert tuple(rows[0]) == CSV_COLUMNS
    assert sorted(row["key"] for row in rows) == sorted(
        f"{p}-{k}" for p in ("ok1", "ok2", "bad", "gone", "hidden")
    )
    types = {row["key"]: row["type"] for row in rows}
    assert types[f"gone-{k}"] == types[f"hidden-{k}"] == ""

    mail_id = result["email"]
    mail = (await oada.get(f"/{mail_id}")).data
    assert (mail["service"], mail["type"]) == ("abalonemail", "email")
    assert mail["parent"]["_id"] == job_id
    config = mail["config"]
    assert (config["from"], config["to"]) == (MAIL["from"], MAIL["to"])
    assert config["subject"] == f"{name} report daily: 2026-01-02"
    assert "email success: 2" in config["text"]
    (attachment,) = config["attachments"]
    assert attachment["filename"] == f"{name}-daily-2026-01-02.csv"
    assert attachment["type"] == "text/csv"
    assert base64.b64decode(attachment["content"]).decode() == stored["csv"]
    pending = (await oada.get(get_layout("pending").pending_path("abalonemail"))).data
    assert mail_id.removeprefix("resources/") in pending


async def test_run_now_with_columns_and_types_on_the_pending_layout(
    server: EmbeddedServer, oada: OADAClient, name: str
) -> None:
    today = datetime.now(UTC).date()
    k = name[-6:]
    await file_job(oada, name, "pending", today, f"e1-{k}", "email")
    await file_job(oada, name, "pending", today, f"e2-{k}", "email", "failure")
    await file_job(oada, name, "pending", today, f"s1-{k}", "sms")
    await file_job(oada, name, "pending", today, f"gone-{k}", None)
    service = make_service(server, name, layout="pending")
    columns = {
        "job": "id",
        "recipient": "/config/to",
        "outcome": "status",
        "error": "fail_type",
        "missing": "/config/nothing",
    }
    service.add_report("today", "0 * * * *", include_today=True, columns=columns, types=["email"])
    async with service:
        # What `oada-jobs cron run MODULE:SERVICE today` does.
        job_id = await post_now(oada, name, entry_named(service, "today"), layout="pending")
        job = await wait_for_outcome(oada, job_id, timeout=20)
    assert job.status == "success", job.result
    result = job.result
    assert isinstance(result, dict)
    assert result["from"] == result["to"] == today.isoformat()
    assert result["jobs"] == 3  # sms left out; the unreadable link kept
    assert result["email"] is None
    stored = (await oada.get(result["stored"])).data
    assert stored["csv"].splitlines()[0] == "job,recipient,outcome,error,missing"
    rows = {row["job"]: row for row in rows_of(stored["csv"])}
    assert rows[f"resources/e1-{k}"] == {
        "job": f"resources/e1-{k}",
        "recipient": f"e1-{k}@example.org",
        "outcome": "success",
        "error": "",
        "missing": "",
    }
    assert rows[f"resources/e2-{k}"]["error"] == "upstream"
    assert rows[f"resources/gone-{k}"]["recipient"] == ""
    assert f"resources/s1-{k}" not in rows


async def test_an_empty_report_is_stored_but_mailed_only_when_asked(
    server: EmbeddedServer, oada: OADAClient, name: str
) -> None:
    service = make_service(server, name)
    service.add_report("quiet", "0 6 * * *", email=MAIL)
    service.add_report("always", "0 6 * * *", email=MAIL, send_empty=True)
    days = {"from": "2025-06-01", "to": "2025-06-02"}
    async with service:
        with pytest.raises(RuntimeError, match="before the service starts"):
            service.add_report("late", "0 6 * * *")
        results = {}
        for report in ("quiet", "always"):
            config = {**entry_named(service, report).config, **days}
            results[report] = await run_job(oada, name, f"report-{report}", config, timeout=20)
        # A config that does not make sense fails the job, saying why.
        bad = {**entry_named(service, "quiet").config, "from": "2025-06-03", "to": "2025-06-01"}
        with pytest.raises(JobFailed) as failed:
            await run_job(oada, name, "report-quiet", bad, timeout=20)
    assert failed.value.fail_type == "invalid-config"
    quiet, always = results["quiet"], results["always"]
    assert isinstance(quiet, dict)
    assert isinstance(always, dict)
    assert (quiet["jobs"], quiet["email"], quiet["summary"]) == (0, None, [])
    assert (quiet["from"], quiet["to"]) == ("2025-06-01", "2025-06-02")
    stored = (await oada.get(quiet["stored"])).data
    assert stored["csv"].splitlines() == [",".join(CSV_COLUMNS)]
    mail = (await oada.get(f"/{always['email']}")).data
    assert "No jobs." in mail["config"]["text"]
    assert mail["config"]["subject"] == f"{name} report always: 2025-06-01-to-2025-06-02"


@pytest.mark.parametrize(
    ("args", "options", "match"),
    [
        (("bad name", "0 6 * * *"), {}, "report name"),
        (("daily", "0 6 * *"), {}, "five fields"),
        (("daily", "0 25 * * *"), {}, "invalid cron schedule"),
        (("daily", "0 6 * * *"), {"days": 0}, "days from 1 to 366"),
        (("daily", "0 6 * * *"), {"days": 400}, "days from 1 to 366"),
        (("daily", "0 6 * * *"), {"days": True}, "valid integer"),
        (("daily", "0 6 * * *"), {"columns": {}}, "at least one column"),
        (("daily", "0 6 * * *"), {"columns": {"x": "config.to"}}, "JSON pointer"),
        (("daily", "0 6 * * *"), {"columns": ["id"]}, "mapping of header"),
        (("daily", "0 6 * * *"), {"types": "email"}, "list of job types"),
        (("daily", "0 6 * * *"), {"types": []}, "non-empty list"),
        (("daily", "0 6 * * *"), {"email": {"from": "a@b.c"}}, "'to' missing"),
        (("daily", "0 6 * * *"), {"email": "ops@example.org"}, "email config object"),
        (("daily", "0 6 * * *"), {"email": {**MAIL, "attachments": "x"}}, "list of objects"),
        (("daily", "0 6 * * *"), {"email": {**MAIL, "when": date(2026, 1, 1)}}, "JSON values"),
        (("daily", "0 6 * * *"), {"email_service": "a b"}, "service name"),
        (("daily", "0 6 * * *"), {"email_layout": "flat"}, "classic"),
        (("daily", "0 6 * * *"), {"timeout": 0}, "timeout > 0"),
        (("taken", "0 6 * * *"), {}, "already exists"),
        (("daily", "0 6 * * *"), {"type": "mine"}, "already has a work function"),
    ],
)
def test_bad_arguments_are_refused_and_register_nothing(
    name: str, args: tuple[str, str], options: dict[str, Any], match: str
) -> None:
    service = unstarted(name)
    service.cron("taken", "* * * * *", type="cleanup")

    async def mine(job: Any, ctx: Any) -> None:
        return None

    service.on("mine", 10, mine)
    with pytest.raises(ValueError, match=match):
        service.add_report(*args, **options)
    assert [entry.name for entry in entries_of(service)] == ["taken"]
    assert service.worker_for("report-daily") is None
    assert service.worker_for("mine") is not None


def test_periods_and_copies(name: str) -> None:
    made = date(2026, 11, 23)
    assert ReportConfig(report="r").period(made) == (date(2026, 11, 22), date(2026, 11, 22))
    week = ReportConfig(report="r", days=7)
    assert week.period(made) == (made - timedelta(days=7), made - timedelta(days=1))
    assert ReportConfig(report="r", days=2, include_today=True).period(made) == (
        made - timedelta(days=1),
        made,
    )
    assert week.to_json() == {
        "report": "r",
        "days": 7,
        "includeToday": False,
        "sendEmpty": False,
        "emailService": "abalonemail",
        "emailLayout": "pending",
    }
    service = unstarted(name)
    service.add_report("weekly", "0 6 * * 1", days=7)
    twin = service.copy()
    assert [entry.name for entry in entries_of(twin)] == ["weekly"]
    assert entry_named(twin, "weekly").config == {**week.to_json(), "report": "weekly"}
    assert twin.worker_for("report-weekly") is not None


async def test_a_retried_run_does_not_mail_twice(
    server: EmbeddedServer, oada: OADAClient, name: str
) -> None:
    await file_job(oada, name, "classic", DAY, f"ok-{name[-6:]}", "email")
    service = make_service(server, name)
    service.add_report("daily", "0 6 * * *", email=MAIL)
    key = f"rep-{name[-6:]}"
    # What an earlier try of this run left behind: its mail job, already posted.
    await oada.put(f"/resources/{key}-email", {"posted": "before"}, content_type=JOBS_TYPE)
    config = {
        **entry_named(service, "daily").config,
        "from": DAY.isoformat(),
        "to": DAY.isoformat(),
    }
    async with service:
        job_id = await post_job(oada, name, "report-daily", config, key=key)
        job = await wait_for_outcome(oada, job_id, timeout=20)
    assert job.status == "success", job.result
    assert isinstance(job.result, dict)
    assert job.result["jobs"] == 1
    assert job.result["email"] == f"resources/{key}-email"
    assert (await oada.get(f"/resources/{key}-email")).data["posted"] == "before"
    with pytest.raises(NotFound):
        await oada.get(get_layout("pending").pending_path("abalonemail"))
