"""The typer application every full-CLI command registers itself on.

Owns only :data:`app` and its root options (``--version``); the commands are
in their own modules, and :mod:`oada_jobs.cli.commands` imports them all and
adds the command groups. It must not import any sub-command. Needs the ``cli`` extra (typer, rich).
"""

from __future__ import annotations

from typing import Annotated

import typer

from .._version import __version__

__all__ = ["app"]

app = typer.Typer(
    name="oada-jobs",
    help="Run OADA job services, an embedded OADA server, and manage jobs and queues.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"oada-jobs {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Run OADA job services, an embedded OADA server, and manage jobs and queues."""
