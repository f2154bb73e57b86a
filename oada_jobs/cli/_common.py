"""What the typer commands share: options, consoles, error reporting, JSON output,
the layout a command works in.

The parts that need no terminal UI (exit codes, errors, settings, connecting)
live in :mod:`oada_jobs.cli._core` and are re-exported here for the commands.

Owns what the typer commands share. May use the framework, the client and
the server; nothing outside ``cli/`` may import it.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from .._extras import Extra, require
from ..client import OADAClient
from ..exceptions import MissingExtra
from ..requester import detect_layout
from ..settings import Settings
from ..tree import Layout, get_layout
from ._core import (
    CLIError,
    ExitCode,
    connect,
    describe_oada_error,
    describe_value,
    fail,
    first_leaf,
    job_id_of,
    read_json_argument,
    resolve_service,
    run_command,
    settings_from,
)

__all__ = [
    "CLIError",
    "DomainOption",
    "ExitCode",
    "JsonOption",
    "LayoutOption",
    "ServiceOption",
    "TokenOption",
    "command",
    "connect",
    "describe_oada_error",
    "describe_value",
    "err_console",
    "fail",
    "first_leaf",
    "job_id_of",
    "out_console",
    "print_json",
    "read_json_argument",
    "require_extra",
    "resolve_layout",
    "resolve_service",
    "run_command",
    "settings_from",
]


# Consoles look up sys.stdout/sys.stderr when they write, so output captured
# by tests (or redirected) goes to the right place.
out_console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


DomainOption = Annotated[
    str | None,
    typer.Option(
        "--domain",
        "-d",
        help="The OADA server, e.g. https://oada.example.org. \\[env: OADA_DOMAIN]",
        show_default=False,
        rich_help_panel="Connection",
    ),
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token",
        "-t",
        help="Token for the OADA server (prefer the environment: "
        "command lines are visible to other users). \\[env: OADA_TOKEN]",
        show_default=False,
        rich_help_panel="Connection",
    ),
]
ServiceOption = Annotated[
    str | None,
    typer.Option(
        "--service",
        "-s",
        help="The service whose jobs or queues to use. \\[env: OADA_JOBS_SERVICE]",
        show_default=False,
    ),
]
LayoutOption = Annotated[
    str | None,
    typer.Option(
        "--layout",
        help="Job-list layout: classic or pending (default: whichever the service "
        "has, else classic). \\[env: OADA_JOBS_LAYOUT]",
        show_default=False,
    ),
]
JsonOption = Annotated[
    bool,
    typer.Option("--json", help="Print plain JSON (for scripts) instead of tables."),
]


F = TypeVar("F", bound=Callable[..., Any])


def command(group: typer.Typer, name: str | None = None) -> Callable[[F], F]:
    """Register a command on *group*; a :class:`CLIError` anywhere in it becomes
    its message on stderr and its exit code."""

    def register(function: F) -> F:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return function(*args, **kwargs)
            except CLIError as error:
                err_console.print(f"[bold red]error:[/] {escape(error.message)}")
                raise typer.Exit(int(error.code)) from None
            except KeyboardInterrupt:
                err_console.print("interrupted")
                raise typer.Exit(130) from None

        group.command(name)(wrapper)
        return function

    return register


def print_json(data: Any, *, plain: bool) -> None:
    """Print *data* as coloured JSON, or as plain indented JSON with *plain*."""
    if plain:
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")
        sys.stdout.flush()
    else:
        out_console.print_json(data=data, sort_keys=False)


async def resolve_layout(
    oada: OADAClient, settings: Settings, service: str, *, posting: bool = False
) -> Layout:
    """The layout *service* uses (:func:`~oada_jobs.requester.detect_layout`),
    else the one from ``--layout``/``OADA_JOBS_LAYOUT``, else ``classic``.

    When *posting*, a layout given that differs from the one the service is
    known to use is refused (a job posted there would never be seen), and a
    service that has never run is warned about (a misspelled name?).
    """
    detected, why = await detect_layout(oada, service)
    explicit = "layout" in settings.explicit()
    if detected is None:
        if posting:
            err_console.print(
                f"[yellow]warning:[/] {why}; check the service name. Posting anyway with the "
                f"{settings.layout if explicit else 'classic'} layout: the job waits until a "
                "service of that name runs with it."
            )
        return get_layout(settings.layout if explicit else "classic")
    if explicit and settings.layout != detected and posting:
        raise CLIError(
            f"service {service!r} reads the {detected} layout ({why}), but the {settings.layout} "
            f"layout was asked for: a job posted there would never run. Drop --layout "
            f"(or OADA_JOBS_LAYOUT), or pass --layout {detected}.",
            ExitCode.USAGE,
        )
    return get_layout(settings.layout if explicit and not posting else detected)


def require_extra(extra: Extra, command_name: str) -> None:
    """End ``oada-jobs <command_name>`` with one line naming the extra it needs,
    unless that extra is installed."""
    try:
        require(extra, f"oada-jobs {command_name}")
    except MissingExtra as error:
        err_console.print(f"[bold red]error:[/] {escape(str(error))}")
        raise typer.Exit(int(ExitCode.FAILED)) from None
