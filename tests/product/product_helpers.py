"""Helpers for the command-line tests: run ``oada-jobs`` commands in a thread.

Commands run their own event loop (``anyio.run``), so tests invoke them in a
worker thread while the embedded server keeps answering on the test's loop.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.to_thread
from typer.testing import CliRunner

from oada_jobs.cli import app

#: Every variable the CLI reads, cleared so the developer's environment
#: cannot leak into a test.
CLI_ENV = (
    "OADA_DOMAIN",
    "OADA_TOKEN",
    "OADA_JOBS_CONCURRENCY",
    "OADA_JOBS_LOGGING",
    "OADA_JOBS_METRICS_PORT",
    "OADA_JOBS_GRACE_PERIOD",
    "OADA_JOBS_LAYOUT",
    "OADA_JOBS_SERVICE",
    "OADA_QUEUE_TOKEN",
    "OADA_JOBS_LOG_FORMAT",
    "OADA_JOBS_LOG_LEVEL",
    "DOMAIN",
    "TOKEN",
)


@dataclass
class Result:
    """What a command did."""

    exit_code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)

    def __repr__(self) -> str:  # shown by failing asserts
        return f"exit {self.exit_code}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


class CLI:
    """Runs ``oada-jobs`` commands in a thread with a given environment."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    async def __call__(
        self, *args: str, env: Mapping[str, str | None] | None = None, input: str | None = None
    ) -> Result:
        merged: dict[str, str | None] = dict.fromkeys(CLI_ENV)
        merged.update(self.env)
        merged.update(env or {})

        def invoke() -> Result:
            runner = CliRunner()
            result = runner.invoke(app, list(args), env=merged, input=input, catch_exceptions=False)
            return Result(result.exit_code, result.stdout, result.stderr)

        return await anyio.to_thread.run_sync(invoke)
