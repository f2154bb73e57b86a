"""``oada-jobs run MODULE:SERVICE``: the container entrypoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import anyio.abc
import pytest
from anyio.abc import Process
from anyio.streams.text import TextReceiveStream
from product_helpers import CLI
from prometheus_client import CollectorRegistry

from oada_jobs import Service
from oada_jobs.cli.run import apply_settings
from oada_jobs.client import OADAClient
from oada_jobs.settings import load_settings
from oada_jobs.testing import EmbeddedServer, post_job, wait_for_job

REPO = Path(__file__).resolve().parents[2]
TARGET = "examples.email_service:service"


async def wait_for_line(process: Process, text: str, seen: list[str]) -> None:
    """Read the process's stderr until a line contains *text*."""
    assert process.stderr is not None
    buffer = ""
    async for chunk in TextReceiveStream(process.stderr):
        buffer += chunk
        seen.append(chunk)
        if text in buffer:
            return
    raise AssertionError(f"the process ended without printing {text!r}:\n{buffer}")


async def test_runs_the_example_until_sigterm(server: EmbeddedServer, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "OADA_DOMAIN": server.url,
        "OADA_TOKEN": server.token,
        "OADA_JOBS_GRACE_PERIOD": "2",
        "EMAIL_OUTBOX": str(tmp_path / "outbox"),
    }
    command = [sys.executable, "-m", "oada_jobs", "run", TARGET, "--app-dir", str(REPO)]
    seen: list[str] = []
    async with await anyio.open_process(
        command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL
    ) as process:
        try:
            with anyio.fail_after(30):
                await wait_for_line(process, "email-service is running on", seen)
            async with OADAClient(server.url, server.token) as oada:
                job_id = await post_job(
                    oada, "email-service", "email", {"to": ["ada@example.org"], "subject": "Hi"}
                )
                job = await wait_for_job(oada, job_id, 20)
            assert job.status == "success", "".join(seen)
            assert len(list((tmp_path / "outbox").glob("*.eml"))) == 1
            process.send_signal(signal.SIGTERM)
            with anyio.fail_after(20):
                code = await process.wait()
        finally:
            if process.returncode is None:
                process.kill()
    assert code == 0
    assert server.token not in "".join(seen) or server.token == "god"


async def test_check_only(cli: CLI) -> None:
    result = await cli("run", TARGET, "--app-dir", str(REPO), "--check")
    assert result.exit_code == 0, result
    assert "settings and server OK" in result.stderr


async def test_check_with_the_names_oada_services_use(
    bare_cli: CLI, server: EmbeddedServer
) -> None:
    # DOMAIN/TOKEN as other OADA services read them, and OADA_JOBS_LOGGING
    # values @oada/jobs accepts: the service starts instead of exiting 2.
    for logging_value in ("info,debug", "debug trace"):
        result = await bare_cli(
            "run",
            TARGET,
            "--app-dir",
            str(REPO),
            "--check",
            env={
                "DOMAIN": server.url,
                "TOKEN": server.token,
                "OADA_JOBS_LOGGING": logging_value,
            },
        )
        assert result.exit_code == 0, result
        assert f"settings and server OK ({server.url})" in result.stderr


async def test_fails_fast_without_a_domain(bare_cli: CLI) -> None:
    result = await bare_cli("run", TARGET, "--app-dir", str(REPO))
    assert result.exit_code == 2, result
    assert "no OADA domain for email-service" in result.stderr


async def test_fails_fast_on_an_unreachable_server(bare_cli: CLI) -> None:
    with anyio.fail_after(20):
        result = await bare_cli(
            "run", TARGET, "--app-dir", str(REPO), "-d", "http://127.0.0.1:9", "-t", "god"
        )
    assert result.exit_code == 3, result
    assert "cannot reach the OADA server at http://127.0.0.1:9" in result.stderr


async def test_fails_fast_on_a_refused_token(cli: CLI) -> None:
    result = await cli("run", TARGET, "--app-dir", str(REPO), env={"OADA_TOKEN": "n0pe-token"})
    assert result.exit_code == 4, result
    assert "refused the token" in result.stderr
    assert "n0pe-token" not in result.stderr


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("no_such_module:service", "cannot import 'no_such_module'"),
        ("examples.email_service:nothing", "has no attribute 'nothing'"),
        ("examples.email_service:DEFAULT_SENDER", "is not a Service"),
        ("not a module", "expected MODULE:SERVICE"),
    ],
)
async def test_bad_targets(cli: CLI, target: str, message: str) -> None:
    result = await cli("run", target, "--app-dir", str(REPO))
    assert result.exit_code == 2, result
    assert message in result.stderr


async def test_a_module_that_fails_to_import(cli: CLI, tmp_path: Path) -> None:
    (tmp_path / "broken_service.py").write_text("raise RuntimeError('boom at import')\n")
    result = await cli("run", "broken_service:service", "--app-dir", str(tmp_path))
    assert result.exit_code == 1, result
    assert "importing 'broken_service' failed" in result.stderr
    assert "boom at import" in result.stderr


async def test_a_factory_function_is_called(cli: CLI, tmp_path: Path) -> None:
    (tmp_path / "factory_service.py").write_text(
        "from oada_jobs import Service\ndef create():\n    return Service('made-by-factory')\n"
    )
    result = await cli("run", "factory_service:create", "--app-dir", str(tmp_path), "--check")
    assert result.exit_code == 0, result
    assert "made-by-factory: settings and server OK" in result.stderr


async def test_bad_flag_values(cli: CLI) -> None:
    result = await cli("run", TARGET, "--app-dir", str(REPO), "--layout", "flat")
    assert result.exit_code == 2
    assert "--layout: Input should be 'classic' or 'pending'" in result.stderr
    result = await cli("run", TARGET, "--app-dir", str(REPO), "--log-level", "loud")
    assert result.exit_code == 2
    assert "--log-level" in result.stderr


def test_settings_replace_only_what_was_set(monkeypatch: pytest.MonkeyPatch) -> None:
    service = Service("svc", concurrency=3, shutdown_grace=7, metrics_registry=CollectorRegistry())
    apply_settings(service, load_settings(domain="http://127.0.0.1:1", token="t"))
    assert service.domain == "http://127.0.0.1:1"
    assert service.config.concurrency == 3
    assert service.config.shutdown_grace == 7
    assert service.layout.name == "classic"

    other = Service("svc", concurrency=3, metrics_registry=CollectorRegistry())
    monkeypatch.setenv("OADA_JOBS_LOGGING", "debug")
    settings = load_settings(
        domain="http://127.0.0.1:1",
        token="t",
        concurrency=5,
        layout="pending",
        grace_period=1.5,
        metrics_port=0,
    )
    apply_settings(other, settings)
    assert other.config.concurrency == 5
    assert other.config.shutdown_grace == 1.5
    assert other.config.metrics_port == 0
    assert other.layout.name == "pending"
    assert os.environ["OADA_JOBS_LOGGING"] == "debug"


async def test_a_metrics_port_in_use_is_one_line(server: EmbeddedServer, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "OADA_DOMAIN": server.url,
        "OADA_TOKEN": server.token,
        "EMAIL_OUTBOX": str(tmp_path / "outbox"),
    }
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    async with listener:
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        command = [sys.executable, "-m", "oada_jobs", "run", TARGET, "--app-dir", str(REPO)]
        command += ["--metrics-port", str(port)]
        with anyio.fail_after(60):
            result = await anyio.run_process(command, env=env, check=False)
    assert result.returncode != 0
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert f":{port}" in lines[0]
    assert "address already in use" in lines[0]
