"""The command line as people meet it: help, prompts, tables and messages."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import anyio.to_thread
import pytest
import typer.main
from product_helpers import CLI, CLI_ENV
from typer.testing import CliRunner

from oada_jobs import run_job
from oada_jobs.cli import app
from oada_jobs.client import OADAClient
from oada_jobs.testing import EmbeddedServer, post_job

REPO = Path(__file__).resolve().parents[2]


def commands(group: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every command path of a (typer or click) *group*, groups included."""
    for name, command in group.commands.items():
        yield (*prefix, name)
        if hasattr(command, "commands"):
            yield from commands(command, (*prefix, name))


def test_help_shows_no_value_for_flags() -> None:
    # A flag takes no value (`--wait`, not `--wait true`); its help must not
    # suggest one.
    paths = [(), *commands(typer.main.get_group(app))]
    assert ("jobs", "post") in paths
    for path in paths:
        result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "120"})
        assert result.exit_code == 0, (path, result.output)
        assert "<bool>" not in result.output, path
        assert "BOOLEAN" not in result.output, path


async def test_queues_add_reads_a_piped_token_without_a_warning(server: EmbeddedServer) -> None:
    env = {name: value for name, value in os.environ.items() if name not in CLI_ENV}
    env |= {"OADA_DOMAIN": server.url, "OADA_TOKEN": server.token, "OADA_JOBS_SERVICE": "svc"}
    command = [sys.executable, "-m", "oada_jobs", "queues", "add", "https://other.example.org"]
    result = await anyio.to_thread.run_sync(
        partial(
            subprocess.run,
            [*command, "--json"],
            input="s3cret-queue-token\n",
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    queue_id = json.loads(result.stdout)["id"]
    async with OADAClient(server.url, server.token) as oada:
        stored = (await oada.get(f"/bookmarks/services/svc/queues/{queue_id}")).data
    assert stored["token"] == "s3cret-queue-token"


async def test_run_job_timeout_says_which_job_and_how_long(server: EmbeddedServer) -> None:
    async with OADAClient(server.url, server.token) as oada:
        with pytest.raises(TimeoutError) as raised:
            # No service takes the job: it stays pending.
            await run_job(oada, "nobody-home", "email", {}, timeout=0.2)
    message = str(raised.value)
    assert message.startswith("job resources/")
    assert "had not finished after 0.2 s" in message


async def test_jobs_list_says_none_yet_instead_of_a_dash(
    cli: CLI, oada: OADAClient, server: EmbeddedServer
) -> None:
    await post_job(oada, "svc", "email", {"to": ["ada@example.org"]})
    result = await cli("jobs", "list")
    assert result.exit_code == 0, result
    assert "pending: 1  success: none yet  failure: none yet" in result.stdout
    assert "(-)" not in result.stdout


async def test_jobs_list_keeps_keys_whole_at_80_columns(cli: CLI, oada: OADAClient) -> None:
    keys = []
    for _ in range(3):
        job_id = await post_job(oada, "svc", "a-rather-long-job-type-name", {"x": 1})
        keys.append(job_id.removeprefix("resources/"))
    result = await cli("jobs", "list", env={"COLUMNS": "80"})
    assert result.exit_code == 0, result
    assert max(len(line) for line in result.stdout.splitlines()) <= 80
    for key in keys:
        assert key in result.stdout, result.stdout


async def test_queues_list_keeps_ids_whole_at_60_columns(cli: CLI) -> None:
    added = await cli(
        "queues",
        "add",
        "https://a-long-domain-name.other.example.org",
        "--token",
        "t",
        "--json",
    )
    assert added.exit_code == 0, added
    queue_id = added.json()["id"]
    result = await cli("queues", "list", env={"COLUMNS": "60"})
    assert result.exit_code == 0, result
    assert queue_id in result.stdout, result.stdout


def test_demo_output_is_gitignored() -> None:
    # The example writes ./outbox by default (and so `oada-jobs run` from a checkout).
    lines = (REPO / ".gitignore").read_text().splitlines()
    assert "outbox/" in lines


async def test_demo_ends_on_one_100x30_screen() -> None:
    # The live table gives way to a summary that, with what follows it, fits
    # a 30-line terminal: nothing of the run scrolls away at the end. (In a
    # directory named as short as the demo's own temporary one.)
    with tempfile.TemporaryDirectory(prefix="oada-jobs-demo-") as where:
        result = await CLI({})("demo", "--timeout", "1", "--dir", where, env={"COLUMNS": "100"})
    assert result.exit_code == 0, result
    lines = result.stdout.rstrip("\n").splitlines()
    rows = sum(max(1, math.ceil(len(line) / 100)) for line in lines)
    assert rows <= 29, result.stdout  # and one for the shell's prompt
    assert "8 of 8 as expected" in result.stdout
    summary = "\n".join(lines)
    assert "jobs-typed-failure/recipient-refused" in summary
    assert "(-)" not in summary
