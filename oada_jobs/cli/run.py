"""``oada-jobs run MODULE:SERVICE``: run a service defined in your code (the container entrypoint).

This is the typer front end; :mod:`oada_jobs.cli._run` does the work, and
:mod:`oada_jobs.cli._minimal` offers the same command without the ``cli`` extra.
Owns this command's options only; nothing but the ``cli`` package may import it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._app import app
from ._common import DomainOption, TokenOption, command
from ._run import apply_settings, import_service, run_service

__all__ = ["apply_settings", "import_service"]


TargetArgument = Annotated[
    str,
    typer.Argument(
        metavar="MODULE:SERVICE",
        help="Where your Service is, e.g. examples.email_service:service.",
    ),
]
ConcurrencyOption = Annotated[
    int | None,
    typer.Option(
        help="Jobs run at once. \\[env: OADA_JOBS_CONCURRENCY]", show_default=False, min=1
    ),
]
RunLayoutOption = Annotated[
    str | None,
    typer.Option(
        help="Job-list layout: classic or pending. \\[env: OADA_JOBS_LAYOUT]",
        show_default=False,
    ),
]
MetricsPortOption = Annotated[
    int | None,
    typer.Option(
        help="Serve Prometheus /metrics on this port. \\[env: OADA_JOBS_METRICS_PORT]",
        show_default=False,
    ),
]
GracePeriodOption = Annotated[
    float | None,
    typer.Option(
        help="Seconds running jobs get to finish on SIGTERM/SIGINT before they are "
        "given back. \\[env: OADA_JOBS_GRACE_PERIOD]",
        show_default=False,
    ),
]
LogLevelOption = Annotated[
    str | None,
    typer.Option(
        help="Python log level: debug, info, warning, error. \\[env: OADA_JOBS_LOG_LEVEL]",
        show_default=False,
    ),
]
LogFormatOption = Annotated[
    str | None,
    typer.Option(
        help="Log lines: text, or json (one object per line, with the job's fields). "
        "\\[env: OADA_JOBS_LOG_FORMAT]",
        show_default=False,
    ),
]
AppDirOption = Annotated[
    Path | None,
    typer.Option(help="Directory to import MODULE from (default: the current one)."),
]
CheckOption = Annotated[
    bool,
    typer.Option("--check", help="Only check the service, the settings and the server, then exit."),
]


@command(app, "run")
def run(
    target: TargetArgument,
    concurrency: ConcurrencyOption = None,
    layout: RunLayoutOption = None,
    metrics_port: MetricsPortOption = None,
    grace_period: GracePeriodOption = None,
    log_level: LogLevelOption = None,
    log_format: LogFormatOption = None,
    app_dir: AppDirOption = None,
    check: CheckOption = False,
    domain: DomainOption = None,
    token: TokenOption = None,
) -> None:
    """Run a service until SIGTERM or SIGINT (Ctrl-C).

    Settings come from the flags, else the environment, else a .env file, else
    what the service's code chose. Exits non-zero at once when the domain or
    token is missing, the server cannot be reached or the token is refused.
    """
    run_service(
        target,
        concurrency=concurrency,
        layout=layout,
        metrics_port=metrics_port,
        grace_period=grace_period,
        log_level=log_level,
        log_format=log_format,
        app_dir=app_dir,
        check=check,
        domain=domain,
        token=token,
    )
