"""The ``oada-jobs`` command line.

Each sub-command lives in its own module and registers itself on :data:`app`.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="oada-jobs",
    help="Run OADA job services, an embedded OADA server, and manage jobs and queues.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def _root() -> None:
    """Run OADA job services, an embedded OADA server, and manage jobs and queues."""


def main() -> None:
    """Console-script entry point."""
    app()


# Sub-commands register themselves on `app` when imported.
from . import cron, dashboard, demo, jobs, queues, report, run, serve  # noqa: E402, F401
