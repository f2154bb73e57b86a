"""``oada-jobs dashboard``: serve the web dashboard for one OADA domain and token.

Listens on 127.0.0.1 unless told otherwise; another address needs
``--allow-remote`` and a login secret (see docs/dashboard.md).

Owns this command's options; the steps that need the dashboard's packages
are in :mod:`oada_jobs.cli._dashboard_server`. May use the dashboard and
``cli/_common``; nothing but the ``cli`` package may import it.
"""

from __future__ import annotations

from typing import Annotated

import typer

from ._app import app
from ._common import (
    DomainOption,
    TokenOption,
    command,
    require_extra,
    settings_from,
)

__all__ = ["SECRET_ENV", "dashboard_command"]

#: Environment variable holding the login secret (keeps it out of `ps`).
SECRET_ENV = "OADA_JOBS_DASHBOARD_SECRET"


HostOption = Annotated[str, typer.Option(help="Interface to listen on.")]
PortOption = Annotated[int, typer.Option(min=0, max=65535, help="TCP port (0 picks a free one).")]
AllowRemoteOption = Annotated[
    bool,
    typer.Option(
        "--allow-remote",
        help="Allow a --host other machines can reach (then a login secret is required).",
    ),
]
LoginSecretOption = Annotated[
    str | None,
    typer.Option(
        "--login-secret",
        envvar=SECRET_ENV,
        show_envvar=False,
        show_default=False,
        help=f"Secret of the login form (prefer the environment). \\[env: {SECRET_ENV}]",
    ),
]
AllowedHostOption = Annotated[
    list[str] | None,
    typer.Option(
        "--allowed-host",
        help="Host name the dashboard answers to (repeatable; default: the loopback "
        "names, or any name with --allow-remote).",
        show_default=False,
    ),
]
SecureCookiesOption = Annotated[
    bool,
    typer.Option(help="Send the session cookie over HTTPS only (behind a TLS proxy)."),
]


@command(app, "dashboard")
def dashboard_command(
    host: HostOption = "127.0.0.1",
    port: PortOption = 8300,
    allow_remote: AllowRemoteOption = False,
    login_secret: LoginSecretOption = None,
    allowed_host: AllowedHostOption = None,
    secure_cookies: SecureCookiesOption = False,
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
    from . import _dashboard_server as web

    config = web.dashboard_config(
        host,
        allow_remote=allow_remote,
        login_secret=login_secret,
        allowed_host=allowed_host,
        secure_cookies=secure_cookies,
    )
    web.run_dashboard(settings, config, host=host, port=port, allow_remote=allow_remote)
