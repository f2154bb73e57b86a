"""The benchmarks keep working: a quick run end to end, and the report from known figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from bench import report
from bench.common import (
    NODE_DIR,
    ROOT,
    BenchError,
    bench_server,
    node_available,
    percentile,
    summarize,
)
from bench.counted_server import CountingApp
from bench.jobs import JOBS_TYPE, ListDrain
from oada_jobs.client import OADAClient
from oada_jobs.testing import EmbeddedServer


def test_percentile_interpolates_and_summarize_keeps_runs() -> None:
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([0.0, 10.0], 95) == pytest.approx(9.5)
    assert percentile([7.0], 99) == 7.0
    assert summarize([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "runs": [3, 1, 2]}
    with pytest.raises(ValueError, match="at least one"):
        summarize([])
    with pytest.raises(ValueError, match="at least one"):
        percentile([], 50)


def _summary(*values: float) -> dict[str, Any]:
    return summarize(list(values))


def _section(py: float, node: float) -> dict[str, Any]:
    return {
        "jobs": 1000,
        "jobs_per_second": {
            "python": _summary(py - 10, py, py + 10),
            "node": _summary(node, node, node + 2),
        },
        "ratio": _summary(py / node),
        "requests_per_job": {"python": _summary(5.0), "node": _summary(7.0)},
        "peak_rss_mib": {"python": _summary(50.0), "node": _summary(110.0)},
        "service_cpu_ms_per_job": {"python": _summary(1.0), "node": _summary(2.0)},
        "server_cpu_ms_per_job": {"python": _summary(3.0), "node": _summary(4.0)},
        "duplicates": {"python": 0, "node": 0},
    }


def _results() -> dict[str, Any]:
    return {
        "quick": False,
        "sizes": {"repeats": 3},
        "machine": {"cpu": "Test CPU", "cores": 2, "python": "3.11.0", "node": "v20.0.0"},
        "started": "2026-01-01T00:00:00+00:00",
        "duration_s": 12.0,
        "throughput": _section(400.0, 100.0),
        "throughput_large": {**_section(250.0, 100.0), "jobs": 10_000},
        "backlog": _section(150.0, 100.0),
        "latency": {
            "jobs": 10,
            "interval_ms": 20,
            "ms": {
                fw: {q: _summary(v) for q, v in (("p50", 4.0), ("p95", 8.0), ("p99", 9.5))}
                for fw in ("python", "node")
            },
        },
        "work": [
            {
                "concurrency": 10,
                "jobs": 300,
                "sleep_ms": 100,
                "ideal_jobs_per_second": 100.0,
                "fraction_of_ideal": {"python": _summary(0.9), "node": _summary(0.5)},
                "jobs_per_second": {"python": _summary(90.0), "node": _summary(50.0)},
            }
        ],
        "scale_out": [
            {"replicas": 1, "jobs": 100, "jobs_per_second": _summary(100.0), "duplicates": [0]},
            {"replicas": 2, "jobs": 100, "jobs_per_second": _summary(180.0), "duplicates": [0]},
            {
                "replicas": 2,
                "mode": "racing",
                "jobs": 100,
                "jobs_per_second": _summary(150.0),
                "requests_per_job": _summary(6.0),
                "duplicates": [0],
            },
        ],
        "uneven": [
            {
                "replicas": 2,
                "long_jobs": 10,
                "long_ms": 5000,
                "short_jobs": 200,
                "short_done_s": 1.5,
                "load": 2.0,
            }
        ],
        "takeover": [
            {
                "jobs": 600,
                "sleep_ms": 50,
                "share": 200,
                "lost": 0,
                "run_again": 5,
                "member_lease_s": 3,
                "takeover_s": 2.5,
                "requests_per_job": 4.5,
                "load": 2.0,
            }
        ],
        "server": {"error": "bench/server.py did not finish within 600 s"},
        "client": {"title": "Client", "columns": ["Phase", "Ours"], "rows": [["get", "1.0"]]},
        "notes": {"first_filing_race": "the race"},
    }


def test_report_is_generated_from_the_results(tmp_path: Path) -> None:
    results = _results()
    report.write(results, tmp_path)
    text = (tmp_path / "benchmarks.md").read_text()
    # Goals: 4x is met at 1,000 jobs; 2.5x at 10,000 and 1.5x for the backlog are not.
    assert "1,000 jobs queued at once | \u2265 3\u00d7 | 4.00\u00d7 | yes |" in text
    assert "10,000 jobs queued at once | \u2265 3\u00d7 | 2.50\u00d7 | **no** |" in text
    assert "job backlog at start | \u2265 3\u00d7 | 1.50\u00d7 | **no** |" in text
    assert "### 10,000 jobs queued at once on a running service" in text
    assert "went from 6.00 to 6.00 ms, oada-jobs (Python)'s from 4.00 to 4.00 ms" in text
    assert "| 400 (390\u2013410) | 100 (100\u2013102) |" in text
    assert "| 90 % |" in text
    # CPU per job 1.0 + 3.0 ms against 2.0 + 4.0 ms: the cores allow 6/4 = 1.5x.
    assert "(4.00 ms), @oada/jobs 2.00 + 4.00 ms (6.00 ms)" in text
    assert "those totals: about 1.50\u00d7" in text
    assert "about 2.00\u00d7, and 3\u00d7 needs the whole job near 2.00 ms" in text
    assert "Jobs run twice, 1/2 replicas | 0 | 0 | yes" in text
    assert "| 2 | racing | 100 | 6.00 |" in text
    assert "| 2 | 10 x 5 s | 200 | 1.50 | 2.0 |" in text
    assert "| 600 x 50 ms | 200 | 0 | 5 | 3 s | 2.50 | 4.50 | 2.0 |" in text
    assert "**Not measured.** bench/server.py did not finish within 600 s" in text
    assert "| get | 1.0 |" in text
    assert "Test CPU (2 cores)" in text
    assert (tmp_path / "benchmarks.png").stat().st_size > 10_000


def test_report_leaves_out_the_ceiling_when_a_cpu_time_was_too_short_to_count() -> None:
    # A quick run can finish within one clock tick of a process's CPU time: it reads 0.
    results = _results()
    results["throughput"]["server_cpu_ms_per_job"]["python"] = _summary(0.0)
    text = report.render(results, None)
    burst = text.split("### 1,000 jobs queued at once")[1].split("### 10,000 jobs")[0]
    assert "Where the ceiling is" not in burst
    assert text.count("Where the ceiling is") == 1


async def test_counting_app_counts_per_token_and_answers_counts() -> None:
    seen: list[str] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])
        if scope["type"] == "websocket":
            await receive()
            await receive()

    app = CountingApp(inner, {"t-service": "service", "t-admin": "admin"})
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def no_body() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    def http(path: str, token: str) -> dict[str, Any]:
        return {
            "type": "http",
            "path": path,
            "headers": [(b"authorization", f"Bearer {token}".encode())],
        }

    await app(http("/bookmarks", "t-service"), no_body, send)
    await app(http("/bookmarks", "unknown"), no_body, send)
    frames = iter(
        [
            {
                "type": "websocket.receive",
                "text": json.dumps({"headers": {"authorization": "Bearer t-service"}}),
            },
            {"type": "websocket.receive", "text": "{}"},
        ]
    )

    async def ws_receive() -> dict[str, Any]:
        return next(frames)

    await app({"type": "websocket", "path": "/", "headers": []}, ws_receive, send)
    await app(http("/_bench/counts", "t-admin"), no_body, send)
    counts = json.loads(sent[-1]["body"])
    assert counts == {"service": {"http": 1, "ws": 1}, "other": {"http": 1, "ws": 1}}
    assert seen == ["http", "http", "websocket"]  # the counts request never reaches the server


@pytest.mark.slow
async def test_list_drain_ends_at_the_server_time_of_the_last_removal(
    server: EmbeddedServer,
) -> None:
    path = "/bookmarks/drain"
    async with OADAClient(server.url, server.token) as oada:
        queue = await oada.create_resource({}, content_type=JOBS_TYPE)
        await oada.put("/bookmarks", {"drain": {"_id": queue}})
        ids = [await oada.create_resource({"i": i}) for i in range(3)]
        drain = ListDrain(oada, path, interval=0.005)
        await drain.start()
        keys = list(await drain.link(ids, chunk=2))
        finished: list[float] = []
        async with anyio.create_task_group() as group:

            async def wait() -> None:
                finished.append(await drain.wait_gone(10))

            group.start_soon(wait)
            await oada.delete(f"{path}/{keys[0]}")
            # An extra write brings the rev to the count one removal early.
            await oada.put(path, {"note": 1}, content_type=JOBS_TYPE)
            await oada.delete(f"{path}/{keys[1]}")
            # Polls see the rev due but a job left: it keeps waiting.
            for _ in range(5):
                await anyio.sleep(0.01)
            assert finished == []
            before_last = time.time()
            await oada.delete(f"{path}/{keys[2]}")
        assert before_last <= finished[0] <= time.time()


async def test_list_drain_says_how_many_jobs_are_left_when_it_gives_up(
    server: EmbeddedServer,
) -> None:
    async with OADAClient(server.url, server.token) as oada:
        await oada.put("/bookmarks/stuck", {}, content_type=JOBS_TYPE)
        drain = ListDrain(oada, "/bookmarks/stuck", interval=0.005)
        await drain.link([await oada.create_resource({"i": i}) for i in range(2)])
        with pytest.raises(BenchError, match="2 of 2 jobs were still queued after 0 s"):
            await drain.wait_gone(0.2)


def _run(module: str, *args: str, timeout: float) -> str:
    """Run ``python -m module args`` from the repository; its standard output."""
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.node
@pytest.mark.timeout(600)
def test_quick_run_measures_both_frameworks(tmp_path: Path) -> None:
    problem = node_available()
    assert problem is None, problem
    sections = (
        "throughput,throughput_large,backlog,latency,work,scale_out,uneven,takeover,server,client"
    )
    _run("bench", "--quick", "--only", sections, "--out", str(tmp_path), timeout=540)
    results = json.loads((tmp_path / "benchmarks.json").read_text())
    for name in ("throughput", "throughput_large", "backlog"):
        section = results[name]
        assert set(section["jobs_per_second"]) == {"python", "node"}
        assert section["duplicates"] == {"python": 0, "node": 0}
        assert section["requests_per_job"]["python"]["median"] > 0
    assert set(results["latency"]["ms"]) == {"python", "node"}
    assert [row["concurrency"] for row in results["work"]] == [10, 100]
    assert all(sum(row["duplicates"]) == 0 for row in results["scale_out"])
    assert {row["mode"] for row in results["scale_out"]} == {"divided", "racing"}
    assert all(row["short_done_s"] > 0 for row in results["uneven"])
    assert all(row["lost"] == 0 for row in results["takeover"])
    assert results["server"]["rows"], results["server"]
    assert results["client"]["rows"], results["client"]
    text = (tmp_path / "benchmarks.md").read_text()
    assert "Quick run" in text
    assert "Not measured" not in text
    assert (tmp_path / "benchmarks.png").exists()


_OFFER_DEFLATE = """
const WebSocket = require(process.argv[1]);
const ws = new WebSocket(process.argv[2]);
ws.on('open', () => { console.log(JSON.stringify(ws.extensions)); ws.close(); });
ws.on('error', (e) => { console.error(e.message); process.exit(1); });
"""


@pytest.mark.node
async def test_the_bench_server_does_not_compress_the_originals_messages() -> None:
    # @oada/client 1.1.4 (ws 7) offers permessage-deflate; the reference
    # server never accepts it, and neither does the benchmark server.
    ws_module = NODE_DIR / "node_modules" / "oada-jobs-1" / "node_modules" / "ws"
    async with bench_server() as server:
        done = await anyio.run_process(
            ["node", "-e", _OFFER_DEFLATE, str(ws_module), server.url.replace("https", "wss", 1)],
            env={**os.environ, "NODE_EXTRA_CA_CERTS": str(server.ca_cert)},
            check=False,
        )
    assert done.returncode == 0, done.stderr.decode()
    assert json.loads(done.stdout) == ""


def test_server_memory_bench_runs_jobs_and_keeps_the_cache_bounded() -> None:
    args = ["--jobs", "40", "--rounds", "2", "--document-cache-size", "25"]
    lines = _run("bench.server_memory", *args, timeout=120).splitlines()
    assert lines[0] == "document cache size 25"
    assert lines[1].startswith("after      40 jobs: RSS ")
    assert lines[2].startswith("after      80 jobs: RSS ")
    assert all(line.endswith(", 25 documents cached") for line in lines[1:])


def test_list_writes_times_every_length_and_a_restart(tmp_path: Path) -> None:
    out = tmp_path / "lists.json"
    argv = ["--sizes", "20,300", "--writes", "10", "--restart", "--json", str(out)]
    done = subprocess.run(
        [sys.executable, "-m", "bench.list_writes", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert [row["size"] for row in result["sizes"]] == [20, 300]
    for row in result["sizes"]:
        assert row["measured"]
        assert 0 < row["put"]["median_ms"] <= row["put"]["max_ms"]
        assert 0 < row["delete"]["median_ms"] <= row["delete"]["max_ms"]
    assert result["restart"]["size"] == 300
    assert result["restart"]["first_answer_ms"] > 0
    assert "### What one write into a list costs" in report._long_haul(None, result)
