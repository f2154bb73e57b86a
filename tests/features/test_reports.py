"""Reports: counts and durations per type and status from the day lists; CSV and JSON output."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, date, datetime
from functools import partial
from pathlib import Path
from typing import Any

import anyio.to_thread
import pytest
from typer.testing import CliRunner, Result

from oada_jobs import Job, JobError, JobFailed, Json, WorkerContext, run_job
from oada_jobs.cli import app
from oada_jobs.client import OADAClient
from oada_jobs.reports import CSV_COLUMNS, collect_jobs, days_between, summarize, write_csv
from oada_jobs.testing import EmbeddedServer
from oada_jobs.tree import JOBS_TYPE, get_layout

from .conftest import make_service

DAY = date(2026, 1, 2)


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # No developer .env or OADA_* variables may change what the CLI sees.
    monkeypatch.chdir(tmp_path)
    for variable in ("OADA_DOMAIN", "OADA_TOKEN", "OADA_JOBS_SERVICE", "OADA_JOBS_LAYOUT"):
        monkeypatch.delenv(variable, raising=False)


async def file_by_hand(
    oada: OADAClient,
    service: str,
    layout: Any,
    status: str,
    key: str,
    job: dict[str, Any] | None,
) -> None:
    """Write a finished job (or, with None, a dangling link) into *DAY*'s list."""
    if job is not None:
        await oada.put(f"/resources/{key}", job, content_type=JOBS_TYPE)
    chosen = get_layout(layout)
    path = chosen.day_index_path(service, status, DAY)
    await oada.put(path, {key: {"_id": f"resources/{key}", "_rev": 0}}, tree=chosen.tree)


def finished_job(service: str, type: str, status: str, started: str, done: str) -> dict[str, Any]:
    result: Json = {"ok": True}
    if status == "failure":
        result = {"name": "JobError", "message": "no", "failType": "upstream"}
    return {
        "service": service,
        "type": type,
        "config": {},
        "status": status,
        "tries": 1,
        "result": result,
        "updates": {
            "a1": {"status": "started", "time": f"2026-01-02T{started}Z"},
            "a2": {"status": "progress", "time": f"2026-01-02T{started}Z"},
            "a3": {"status": status, "time": f"2026-01-02T{done}Z"},
        },
    }


async def seed(oada: OADAClient, name: str, layout: Any) -> None:
    await file_by_hand(
        oada,
        name,
        layout,
        "success",
        "j1",
        finished_job(name, "email", "success", "10:00:00.000", "10:00:02.000"),
    )
    await file_by_hand(
        oada,
        name,
        layout,
        "success",
        "j2",
        finished_job(name, "email", "success", "10:01:00.000", "10:01:04.000"),
    )
    await file_by_hand(
        oada,
        name,
        layout,
        "failure",
        "j3",
        finished_job(name, "email", "failure", "10:02:00.000", "10:02:01.500"),
    )
    await file_by_hand(oada, name, layout, "success", "gone", None)


@pytest.mark.parametrize("layout", ["classic", "pending"])
async def test_counts_and_durations_per_type_and_status(
    oada: OADAClient, name: str, layout: Any
) -> None:
    await seed(oada, name, layout)
    records = await collect_jobs(oada, name, date(2026, 1, 1), date(2026, 1, 3), layout=layout)
    assert [(r.key, r.status, r.type) for r in records] == [
        ("j3", "failure", "email"),
        ("gone", "success", None),
        ("j1", "success", "email"),
        ("j2", "success", "email"),
    ]
    assert records[0].fail_type == "upstream"
    assert records[0].duration == 1.5
    rows = {(s.type, s.status): s for s in summarize(records)}
    assert set(rows) == {("?", "success"), ("email", "failure"), ("email", "success")}
    ok = rows["email", "success"]
    assert (ok.count, ok.timed, ok.mean, ok.median, ok.p95, ok.max) == (2, 2, 3.0, 3.0, 4.0, 4.0)
    assert rows["?", "success"].count == 1
    assert rows["?", "success"].mean is None


async def test_csv_has_one_row_per_job(oada: OADAClient, name: str) -> None:
    await seed(oada, name, "classic")
    records = await collect_jobs(oada, name, DAY, DAY)
    out = io.StringIO()
    assert write_csv(records, out) == 4
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert rows[0]["key"] == "j3"
    assert rows[0]["fail_type"] == "upstream"
    assert rows[0]["duration"] == "1.5"
    assert rows[1]["type"] == ""  # the dangling link


async def test_live_service_jobs_are_reported(
    server: EmbeddedServer, oada: OADAClient, name: str
) -> None:
    async def ok(job: Job[Json], ctx: WorkerContext) -> Json:
        return {"done": True}

    async def bad(job: Job[Json], ctx: WorkerContext) -> Json:
        raise JobError("no", "upstream")

    service = make_service(server, name, layout="pending")
    service.on("ok", 10, ok)
    service.on("bad", 10, bad)
    async with service:
        for _ in range(3):
            await run_job(oada, name, "ok", layout="pending", timeout=15)
        with pytest.raises(JobFailed):
            await run_job(oada, name, "bad", layout="pending", timeout=15)
    today = datetime.now(UTC).date()
    records = await collect_jobs(oada, name, today, today, layout="pending")
    rows = {(s.type, s.status): s for s in summarize(records)}
    assert rows["ok", "success"].count == 3
    assert rows["ok", "success"].timed == 3
    assert rows["bad", "failure"].count == 1


def test_day_ranges_are_checked() -> None:
    assert days_between(DAY, DAY) == [DAY]
    with pytest.raises(ValueError, match="before the last"):
        days_between(date(2026, 1, 3), DAY)
    with pytest.raises(ValueError, match="at most 366 days"):
        days_between(date(2020, 1, 1), DAY)


async def report_cli(server: EmbeddedServer, *args: str) -> Result:
    argv = ["report", "--domain", server.url, "--token", server.token, *args]
    return await anyio.to_thread.run_sync(partial(CliRunner().invoke, app, argv))


async def test_cli_json_and_csv(
    server: EmbeddedServer, oada: OADAClient, name: str, tmp_path: Path
) -> None:
    await seed(oada, name, "classic")
    target = tmp_path / "jobs.csv"
    result = await report_cli(
        server,
        "-s",
        name,
        "--from",
        "2026-01-01",
        "--to",
        "2026-01-02",
        "--json",
        "--csv",
        str(target),
    )
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["jobs"] == 4
    assert body["csv"] == {"file": str(target), "rows": 4}
    counts = {(s["type"], s["status"]): s["count"] for s in body["summary"]}
    assert counts == {("?", "success"): 1, ("email", "failure"): 1, ("email", "success"): 2}
    assert len(target.read_text().splitlines()) == 5
    table = await report_cli(server, "-s", name, "--to", "2026-01-02", "--days", "2")
    assert table.exit_code == 0, table.output
    assert "email" in table.stdout
    assert "4 job(s)" in table.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--from", "yesterday"), "--from must be a day as YYYY-MM-DD"),
        (("--from", "2026-01-03", "--to", "2026-01-01"), "before the last"),
        (("--csv", "."), "--csv must name a file"),
    ],
)
async def test_cli_bad_input(
    server: EmbeddedServer, name: str, args: tuple[str, ...], message: str
) -> None:
    result = await report_cli(server, "-s", name, *args)
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
