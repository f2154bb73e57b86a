"""The dashboard's ASGI app: pages, live streams and confirmed actions.

:func:`create_dashboard_app` builds a Starlette app for one OADA domain and
token. Pages are rendered on the server with Jinja2 (autoescaping on: job
configs and results are user data and are shown, never run); a page that
follows changes fetches its own fragment again when its event stream (see
``live.py``) says ``changed``. Actions (cancel, retry) are a GET that shows
a confirmation form and a POST that does it; every POST carries the
session's CSRF token and passes the origin check of ``security.py``.

This module owns the routes, the pages and their live streams. What the
routes share (the :class:`Dashboard`, rendering, parameter checks) is in
``site.py``; the confirmed actions and the login are in ``actions.py``.
The OADA token stays in the server: no page, cookie or URL holds it.

May use the framework's public reads (reports, requester, job, service) and
the client; nothing in the framework may import the dashboard.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime, timedelta

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from ..exceptions import OADAError
from ..reports import days_between
from ..service import Service
from .actions import (
    confirm_action,
    confirm_control,
    do_action,
    do_control,
    login,
    login_form,
    logout,
    read_control,
)
from .chart import duration_chart
from .config import DashboardConfig
from .live import EventStream
from .security import (
    LOOPBACK_HOSTS,
    GuardMiddleware,
)
from .site import STATIC, Dashboard, NotAJob, dashboard_of, key_param, service_param

__all__ = ["Dashboard", "create_dashboard_app"]


def _days(request: Request, config: DashboardConfig) -> tuple[date, date]:
    today = datetime.now(UTC).date()

    def day(name: str) -> date | None:
        text = request.query_params.get(name)
        if not text:
            return None
        try:
            return date.fromisoformat(text)
        except ValueError:
            raise NotAJob(f"expected {name} as a date like 2026-01-31, got {text!r}") from None

    start = day("start") or today
    end = day("end") or start
    try:
        days = days_between(start, end)
    except ValueError as error:
        raise NotAJob(str(error)) from None
    if len(days) > config.max_days:
        raise NotAJob(f"expected at most {config.max_days} days, got {len(days)}")
    return start, end


async def overview(request: Request) -> Response:
    dashboard = dashboard_of(request)
    today = datetime.now(UTC).date()
    try:
        rows = await dashboard.reader.overview(today)
    except OADAError as error:
        return dashboard.oada_error(request, error)
    dashboard.health.recovered()
    return dashboard.render(request, "overview.html", services=rows, today=today)


async def service_page(request: Request) -> Response:
    dashboard = dashboard_of(request)
    service = service_param(request)
    start, end = _days(request, dashboard.config)
    today = datetime.now(UTC).date()
    try:
        page = await dashboard.reader.service_page(
            service, start, end, dashboard.queues_known(service)
        )
        control = await read_control(dashboard.oada, service)
    except OADAError as error:
        return dashboard.oada_error(request, error)
    dashboard.health.recovered()
    return dashboard.render(
        request,
        "service.html",
        page=page,
        control=control,
        chart=duration_chart(page.records),
        finished=page.newest_finished(dashboard.config.max_finished_rows),
        local=service in dashboard.services,
        max_list_jobs=dashboard.config.max_list_jobs,
        today=today,
        week_start=today - timedelta(days=6),
    )


async def job_page(request: Request) -> Response:
    dashboard = dashboard_of(request)
    key = key_param(request)
    try:
        detail = await dashboard.reader.job(key)
    except OADAError as error:
        return dashboard.oada_error(request, error)
    dashboard.health.recovered()
    if detail is None:
        return dashboard.error(request, 404, f"there is no job resources/{key}")
    return dashboard.render(request, "job.html", job=detail, data=detail.data)


class _Events:
    """``/events/...``: one live stream per open page (at most ``max_streams``)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        dashboard = dashboard_of(request)
        reader = dashboard.reader
        if self.kind == "service":
            service = service_param(request)

            async def paths() -> list[str]:
                return await reader.watch_paths(service)
        elif self.kind == "job":
            key = key_param(request)

            async def paths() -> list[str]:
                return [f"/resources/{key}"]
        else:

            async def paths() -> list[str]:
                return await reader.overview_paths()

        if dashboard.streams >= dashboard.config.max_streams:
            await PlainTextResponse("too many live pages open", status_code=503)(
                scope, receive, send
            )
            return
        dashboard.streams += 1
        try:
            await EventStream(
                dashboard.hub, dashboard.config, paths, dashboard.health, dashboard.stopping
            )(scope, receive, send)
        finally:
            dashboard.streams -= 1


async def _not_found(request: Request, error: Exception) -> Response:
    return dashboard_of(request).error(request, 404, str(error))


def create_dashboard_app(
    domain: str,
    token: str,
    *,
    services: Iterable[Service] = (),
    config: DashboardConfig | None = None,
) -> Starlette:
    """The dashboard for the OADA server at *domain*, reading and acting with *token*.

    *services* running in this process add what only they know (whether
    each queue's watch is open). *config* sets the login secret and limits
    (:class:`~oada_jobs.dashboard.DashboardConfig`); without a login secret
    anyone who can reach the app can act with the token, so serve it on
    loopback only (``oada-jobs dashboard`` enforces that).

    Its lifespan opens the OADA client. To mount it in another app, run
    that lifespan from yours::

        dashboard = create_dashboard_app(domain, token, services=[service])

        @asynccontextmanager
        async def lifespan(app):
            async with dashboard.router.lifespan_context(dashboard):
                yield

        app = Starlette(routes=[Mount("/dashboard", dashboard)], lifespan=lifespan)
    """
    config = config or DashboardConfig()
    dashboard = Dashboard(domain, token, config, {s.name: s for s in services})

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with dashboard.running():
            yield

    app = Starlette(
        routes=_routes(),
        middleware=_middleware(config, dashboard),
        exception_handlers={NotAJob: _not_found},
        lifespan=lifespan,
    )
    app.state.dashboard = dashboard
    return app


def _routes() -> list[Route | Mount]:
    """The pages, actions and live streams, by URL."""
    return [
        Route("/", overview, name="overview"),
        Route("/services/{service}", service_page, name="service"),
        Route(
            "/services/{service}/control/{action}",
            confirm_control,
            methods=["GET"],
            name="confirm_control",
        ),
        Route("/services/{service}/control/{action}", do_control, methods=["POST"], name="control"),
        Route("/jobs/{key}", job_page, name="job"),
        Route("/jobs/{key}/{action}", confirm_action, methods=["GET"], name="confirm"),
        Route("/jobs/{key}/{action}", do_action, methods=["POST"], name="action"),
        Route("/login", login_form, methods=["GET"], name="login_form"),
        Route("/login", login, methods=["POST"], name="login"),
        Route("/logout", logout, methods=["POST"], name="logout"),
        Route("/events", _Events("overview"), name="events"),
        Route("/events/services/{service}", _Events("service"), name="service_events"),
        Route("/events/jobs/{key}", _Events("job"), name="job_events"),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]


def _middleware(config: DashboardConfig, dashboard: Dashboard) -> list[Middleware]:
    """The signed session cookie, then the guard of ``security.py`` (hosts, login)."""
    session_key = (
        config.session_key.get_secret_value() if config.session_key else secrets.token_urlsafe(32)
    )
    return [
        Middleware(
            SessionMiddleware,
            secret_key=session_key,
            session_cookie="oada_jobs_dashboard",
            max_age=config.session_max_age,
            same_site="strict",
            https_only=config.secure_cookies,
        ),
        Middleware(
            GuardMiddleware,
            login_required=dashboard.login_required,
            allowed_hosts=config.allowed_hosts or LOOPBACK_HOSTS,
        ),
    ]
