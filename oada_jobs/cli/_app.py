"""The root ``typer`` application every sub-command registers itself on.

Owns only :data:`app` and its root callback. Sub-command modules import it
from here; the package ``__init__`` imports them, so nothing below it imports
the package itself.

It must not import any sub-command.
"""

from __future__ import annotations

import typer

__all__ = ["app"]

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
