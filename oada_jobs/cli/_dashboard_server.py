"""What ``oada-jobs dashboard`` does once its options are read: the dashboard's
config from them, then serving it until SIGTERM or SIGINT.

Owns these two steps. Imports the dashboard, whose packages are the
``dashboard`` extra: only :mod:`oada_jobs.cli.dashboard` imports this module,
after checking that extra is installed, so every other command works without
it.
"""

from __future__ import annotations

import anyio
from pydantic import SecretStr, ValidationError

from .._loop import run as run_process
from ..dashboard import (
    BindRefused,
    DashboardConfig,
    check_bind,
    create_dashboard_app,
    serve_dashboard,
)
from ..settings import Settings, describe_error
from ._common import CLIError, ExitCode, connect, out_console

__all__ = ["dashboard_config", "run_dashboard"]


def dashboard_config(
    host: str,
    *,
    allow_remote: bool,
    login_secret: str | None,
    allowed_host: list[str] | None,
    secure_cookies: bool,
) -> DashboardConfig:
    """The config the options ask for; refuses (exit 2) a *host* others can
    reach without ``--allow-remote`` and a login secret."""
    try:
        check_bind(host, allow_remote=allow_remote, has_login=bool(login_secret))
    except BindRefused as error:
        raise CLIError(str(error), ExitCode.USAGE) from None
    hosts = tuple(allowed_host) if allowed_host else (("*",) if allow_remote else None)
    try:
        return DashboardConfig(
            login_secret=SecretStr(login_secret) if login_secret else None,
            allowed_hosts=hosts,
            secure_cookies=secure_cookies,
        )
    except ValidationError as error:
        raise CLIError(
            f"invalid dashboard setting: {describe_error(error)}", ExitCode.USAGE
        ) from None


def run_dashboard(
    settings: Settings, config: DashboardConfig, *, host: str, port: int, allow_remote: bool
) -> None:
    """Serve the dashboard for the OADA server of *settings* until SIGTERM or
    SIGINT; an address that cannot be listened on ends it with exit 1."""

    async def main() -> None:
        async with connect(settings) as oada:
            oada_domain = oada.domain
        oada_token = settings.token_value() or ""
        dashboard = create_dashboard_app(oada_domain, oada_token, config=config)
        async with anyio.create_task_group() as group:
            handle = await group.start(
                lambda task_status: serve_dashboard(
                    dashboard,
                    host=host,
                    port=port,
                    allow_remote=allow_remote,
                    handle_signals=True,
                    task_status=task_status,
                )
            )
            out_console.print(f"dashboard for {oada_domain} on {handle.url}  (Ctrl-C stops it)")

    try:
        run_process(main)
    except OSError as error:
        raise CLIError(
            f"cannot listen on {host}:{port}: {error.strerror}", ExitCode.FAILED
        ) from None
