"""The full ``oada-jobs`` command line: the typer :data:`app` with every command.

Importing this module registers the commands; it needs the ``cli`` extra
(typer, rich). ``serve`` and ``demo`` also need the ``server`` extra, which
they check when they start.
"""

from __future__ import annotations

from . import cron, dashboard, demo, jobs, queues, report, run, serve
from ._app import app

__all__ = ["app"]

# The command modules register their commands on `app` when imported.
_COMMANDS = (cron, dashboard, demo, jobs, queues, report, run, serve)

# The command groups are added here, in the order the help lists them.
for _group in (jobs.jobs_app, cron.cron_app, queues.queues_app):
    app.add_typer(_group)
