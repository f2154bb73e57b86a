"""``--log-format json``: one JSON object per line, with the job's fields bound."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.streams.text import TextReceiveStream

from oada_jobs.client import OADAClient
from oada_jobs.logs import JSONFormatter, configure_logging
from oada_jobs.runner import JobLogAdapter
from oada_jobs.settings import load_settings
from oada_jobs.testing import EmbeddedServer, post_job, wait_for_job

SERVICE_MODULE = """
from oada_jobs import Service

service = Service("json-logs-svc")


@service.on("echo", timeout=10)
async def echo(job, ctx):
    ctx.logger.info("working on it", extra={"step": 1})
    return {"ok": True}
"""

CONTEXT = {
    "service": "svc",
    "queue": "_default",
    "job_id": "resources/abc",
    "job_key": "abc",
    "job_type": "echo",
    "trace_id": "trace-1",
}


@contextmanager
def job_log(formatter: logging.Formatter) -> Iterator[tuple[JobLogAdapter, io.StringIO]]:
    """A job's log adapter on a logger of its own, and what its handler writes."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger = logging.getLogger("oada_jobs.test-json")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    try:
        yield JobLogAdapter(logger, dict(CONTEXT)), stream
    finally:
        logger.removeHandler(handler)
        logger.propagate = True


def test_json_lines_carry_the_bound_fields() -> None:
    with job_log(JSONFormatter()) as (log, stream):
        log.warning("job finished: %s", "failure")
        try:
            raise RuntimeError("boom \u00e9")
        except RuntimeError:
            log.exception("work function failed")
        log.logger.info("plain", extra={"odd": object()})
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    first, second, third = (json.loads(line) for line in lines)
    assert {key: first[key] for key in CONTEXT} == CONTEXT
    assert first["message"] == "job finished: failure"  # the text prefix is for text only
    assert first["level"] == "WARNING"
    assert first["logger"] == "oada_jobs.test-json"
    assert first["time"].endswith("Z")
    assert "RuntimeError: boom \u00e9" in second["exception"]
    assert second["job_id"] == "resources/abc"
    assert third["message"] == "plain"
    assert third["odd"].startswith("<object object")


def test_a_job_message_with_a_lone_surrogate_is_written_escaped_not_dropped() -> None:
    # The record still names the line that logged, not the adapter.
    with job_log(logging.Formatter("%(filename)s %(message)s")) as (log, stream):
        bad = ValueError(b"bad \xff byte".decode("utf-8", "surrogateescape"))
        log.error("work function failed: %s: %s", type(bad).__name__, bad)
        log.info("100% done")
        log.info("%(done)d of %(total)d", {"done": 1, "total": 2})
    text = stream.getvalue()
    text.encode("utf-8")  # a UTF-8 handler writes it as it is
    assert text.splitlines() == [
        "test_json_logs.py [svc/abc] work function failed: ValueError: bad \\udcff byte",
        "test_json_logs.py [svc/abc] 100% done",
        "test_json_logs.py [svc/abc] 1 of 2",
    ]


def test_configure_logging_installs_one_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(root, "level", root.level)
    stream = io.StringIO()
    configure_logging("info", "text", stream=io.StringIO())
    handler = configure_logging("WARNING", "json", stream=stream)
    assert root.handlers == [handler]
    logging.getLogger("oada_jobs").info("not shown")
    logging.getLogger("oada_jobs").warning("shown", extra={"job_id": "resources/x"})
    (line,) = stream.getvalue().splitlines()
    assert json.loads(line)["job_id"] == "resources/x"
    with pytest.raises(ValueError, match="log format"):
        configure_logging("info", "xml")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="log level"):
        configure_logging("loud")


@pytest.mark.parametrize("how", ["flag", "env"])
async def test_run_writes_json_lines(server: EmbeddedServer, tmp_path: Path, how: str) -> None:
    (tmp_path / "json_logs_service.py").write_text(SERVICE_MODULE)
    env = {
        **os.environ,
        "OADA_DOMAIN": server.url,
        "OADA_TOKEN": server.token,
        "OADA_JOBS_GRACE_PERIOD": "2",
    }
    command = [sys.executable, "-m", "oada_jobs", "run", "json_logs_service:service"]
    command += ["--app-dir", str(tmp_path)]
    if how == "flag":
        command += ["--log-format", "json"]
    else:
        env["OADA_JOBS_LOG_FORMAT"] = "json"
        env["OADA_JOBS_LOG_LEVEL"] = "debug"
    output = ""
    async with await anyio.open_process(
        command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL
    ) as process:
        try:
            assert process.stderr is not None
            stderr = TextReceiveStream(process.stderr)
            with anyio.fail_after(30):
                async for chunk in stderr:
                    output += chunk
                    if "is running on" in output:
                        break
            async with OADAClient(server.url, server.token) as oada:
                job_id = await post_job(
                    oada, "json-logs-svc", "echo", {"traceId": "4bf92f3577b34da6"}
                )
                assert (await wait_for_job(oada, job_id, 20)).status == "success"
            process.send_signal(signal.SIGTERM)
            with anyio.fail_after(20):
                async for chunk in stderr:
                    output += chunk
                assert await process.wait() == 0
        finally:
            if process.returncode is None:
                process.kill()
    records: list[dict[str, Any]] = [json.loads(line) for line in output.splitlines() if line]
    by_message = {record["message"]: record for record in records}
    expected = {
        "service": "json-logs-svc",
        "queue": "_default",
        "job_id": job_id,
        "job_key": job_id.removeprefix("resources/"),
        "job_type": "echo",
        "trace_id": "4bf92f3577b34da6",
    }
    for message in ("working on it", "job finished: success"):
        record = by_message[message]
        assert {key: record.get(key) for key in expected} == expected, record
    assert by_message["working on it"]["step"] == 1
    assert any(record["level"] == "DEBUG" for record in records) == (how == "env")
    assert server.token not in output or server.token == "god"


def test_settings_configure_logging_as_run_does(monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(root, "level", root.level)
    monkeypatch.setenv("OADA_JOBS_LOG_FORMAT", "json")
    monkeypatch.setenv("OADA_JOBS_LOG_LEVEL", "error")
    handler = load_settings().configure_logging()
    assert isinstance(handler, logging.StreamHandler)
    assert isinstance(handler.formatter, JSONFormatter)
    assert root.level == logging.ERROR
