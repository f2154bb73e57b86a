"""``oada-jobs dashboard``: serve the web dashboard for one OADA domain and token.

Listens on 127.0.0.1 unless told otherwise; another address needs
``--allow-remote`` and a login secret (see docs/dashboard.md).

Owns this command only. May use the dashboard and ``cli/_common``; nothing
but the ``cli`` package may import it.
"""

from __future__ import annotations

from typing import Annotated

import anyio
import typer
from pydantic import SecretStr, ValidationError

from .._loop import run as run_process
from ..settings import describe_error
from ._app import app
from ._common import (
    CLIError,
    DomainOption,
    ExitCode,
    TokenOption,
    command,
    connect,
    out_console,
    require_extra,
    settings_from,
)

__all__ = ["SECRET_ENV", "dashboard_command"]

#: Environment variable holding the login secret (keeps it out of `ps`).
SECRET_ENV = "OADA_JOBS_DASHBOARD_SECRET"


@command(app, "dashboard")
def dashboard_command(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="TCP port (0 picks a free one).")
    ] = 8300,
    allow_remote: Annotated[
        bool,
        typer.Option(
            "--allow-remote",
            help="Allow a --host other machines can reach (then a login secret is required).",
        ),
    ] = False,
    login_secret: Annotated[
        str | None,
        typer.Option(
            "--login-secret",
            envvar=SECRET_ENV,
            show_envvar=False,
            show_default=False,
            help=f"Secret of the login form (prefer the environment). \\[env: {SECRET_ENV}]",
        ),
    ] = None,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(
            "--allowed-host",
            help="Host name the dashboard answers to (repeatable; default: the loopback "
            "names, or any name with --allow-remote).",
            show_default=False,
        ),
    ] = None,
    secure_cookies: Annotated[
        bool,
        typer.Option(help="Send the session cookie over HTTPS only (behind a TLS proxy)."),
    ] = False,
    domain: DomainOption = None,
    token: TokenOption = None,
) -> None:
    """Serve a web page to watch and steer the jobs of the services on one OADA server.

    The OADA token stays in this process; the browser never sees it.
    """
    settings = settings_from(domain=domain, token=token)
    require_extra("dashboard", "dashboard")
    # The dashboard's packages are an optional extra: imported only when the
    # command runs, so every other command works without them.
    from ..dashboard import (
        BindRefused,
        DashboardConfig,
        check_bind,
        create_dashboard_app,
        serve_dashboard,
    )

    try:
        check_bind(host, allow_remote=allow_remote, has_login=bool(login_secret))
    except BindRefused as error:
        raise CLIError(str(error), ExitCode.USAGE) from None
    hosts = tuple(allowed_host) if allowed_host else (("*",) if allow_remote else None)
    try:
        config = DashboardConfig(
            login_secret=SecretStr(login_secret) if login_secret else None,
            allowed_hosts=hosts,
            secure_cookies=secure_cookies,
        )
    except ValidationError as error:
        raise CLIError(
            f"invalid dashboard setting: {describe_error(error)}", ExitCode.USAGE
        ) from None

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
