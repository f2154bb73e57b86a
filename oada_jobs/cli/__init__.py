"""The ``oada-jobs`` command line.

Each sub-command lives in its own module and registers itself on :data:`app`
(defined in ``_app.py``, which the sub-commands import). This package sits
on top of everything: nothing in ``oada_jobs`` imports it.
"""

from __future__ import annotations

# Sub-commands register themselves on `app` when imported.
from . import cron, dashboard, demo, jobs, queues, report, run, serve  # noqa: F401
from ._app import app

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point."""
    app()
