"""The ``oada-jobs`` command line of a core install: ``run`` alone, on argparse.

A service in a container needs the framework, the client and ``oada-jobs
run``, not typer and rich (about a fifth of a full install). Without the
``cli`` extra the entry point lands here: ``run`` takes the same options as
the full command and calls the same body (:func:`oada_jobs.cli._run.run_service`);
every other command ends with one line naming the extra it needs. Nothing
here may import typer or rich.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from .._extras import Extra
from .._version import __version__
from ..exceptions import MissingExtra
from ._core import CLIError, ExitCode
from ._run import run_service

__all__ = ["EXTRA_COMMANDS", "main", "parser"]

#: The commands a core install lacks, and the extra that brings each.
EXTRA_COMMANDS: dict[str, Extra] = {
    "serve": "server",
    "demo": "server",
    "dashboard": "dashboard",
    "jobs": "cli",
    "queues": "cli",
    "cron": "cli",
    "report": "cli",
}


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 1 or more, got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    """The core install's ``oada-jobs`` parser."""
    root = argparse.ArgumentParser(
        prog="oada-jobs",
        description="Run OADA job services.",
        epilog="This install has `run` only. The other commands need an extra:\n"
        "  jobs, queues, cron, report   pip install 'oada-jobs[cli]'\n"
        "  serve, demo                  pip install 'oada-jobs[server]'",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    root.add_argument("--version", action="version", version=f"oada-jobs {__version__}")
    commands = root.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_run(commands)
    return root


def _add_run(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``run`` and its options, with the same names and help as the full command."""
    run = commands.add_parser(
        "run",
        help="Run a service until SIGTERM or SIGINT (Ctrl-C).",
        description="Run a service until SIGTERM or SIGINT (Ctrl-C). Settings come from "
        "the flags, else the environment, else a .env file, else what the service's code "
        "chose. Exits non-zero at once when the domain or token is missing, the server "
        "cannot be reached or the token is refused.",
    )
    run.add_argument(
        "target", metavar="MODULE:SERVICE", help="Where your Service is, e.g. app:service."
    )
    run.add_argument(
        "--concurrency", type=_positive_int, help="Jobs run at once. [env: OADA_JOBS_CONCURRENCY]"
    )
    run.add_argument(
        "--layout", help="Job-list layout: classic or pending. [env: OADA_JOBS_LAYOUT]"
    )
    run.add_argument(
        "--metrics-port",
        type=int,
        help="Serve Prometheus /metrics on this port. [env: OADA_JOBS_METRICS_PORT]",
    )
    run.add_argument(
        "--grace-period",
        type=float,
        help="Seconds running jobs get to finish on SIGTERM/SIGINT before they are given "
        "back. [env: OADA_JOBS_GRACE_PERIOD]",
    )
    run.add_argument(
        "--log-level",
        help="Python log level: debug, info, warning, error. [env: OADA_JOBS_LOG_LEVEL]",
    )
    run.add_argument(
        "--log-format",
        help="Log lines: text, or json (one object per line, with the job's fields). "
        "[env: OADA_JOBS_LOG_FORMAT]",
    )
    run.add_argument(
        "--app-dir",
        type=Path,
        help="Directory to import MODULE from (default: the current one).",
    )
    run.add_argument(
        "--check",
        action="store_true",
        help="Only check the service, the settings and the server, then exit.",
    )
    _add_connection_options(run)


def _add_connection_options(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--domain", "-d", help="The OADA server, e.g. https://oada.example.org. [env: OADA_DOMAIN]"
    )
    command.add_argument(
        "--token",
        "-t",
        help="Token for the OADA server (prefer the environment: command lines are visible "
        "to other users). [env: OADA_TOKEN]",
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Run the core install's command line; exits with the command's code."""
    args = list(sys.argv[1:] if argv is None else argv)
    words = [arg for arg in args if not arg.startswith("-")]
    if words and words[0] in EXTRA_COMMANDS:
        _exit_with(str(MissingExtra(f"oada-jobs {words[0]}", EXTRA_COMMANDS[words[0]])), 1)
    options = parser().parse_args(args)
    try:
        run_service(
            options.target,
            concurrency=options.concurrency,
            layout=options.layout,
            metrics_port=options.metrics_port,
            grace_period=options.grace_period,
            log_level=options.log_level,
            log_format=options.log_format,
            app_dir=options.app_dir,
            check=options.check,
            domain=options.domain,
            token=options.token,
        )
    except CLIError as error:
        _exit_with(error.message, int(error.code))
    except KeyboardInterrupt:
        _exit_with("interrupted", 130, prefix="")
    sys.exit(int(ExitCode.OK))


def _exit_with(message: str, code: int, *, prefix: str = "error: ") -> NoReturn:
    print(f"{prefix}{message}", file=sys.stderr, flush=True)
    sys.exit(code)
