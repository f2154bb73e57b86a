"""The dashboard's ASGI app: pages, live streams and confirmed actions.

:func:`create_dashboard_app` builds a Starlette app for one OADA domain and
token. Pages are rendered on the server with Jinja2 (autoescaping on: job
configs and results are user data and are shown, never run); a page that
follows changes fetches its own fragment again when its event stream (see
``live.py``) says ``changed``. Actions (cancel, retry) are a GET that shows
a confirmation form and a POST that does it; every POST carries the
session's CSRF token and passes the origin check of ``security.py``.

This module owns routing, rendering and the two actions. It reads OADA
through ``reads.py`` and writes only through the framework's public
functions (:func:`~oada_jobs.job.request_cancel`, :func:`~oada_jobs.requester.post_job`).
The OADA token stays in the server: no page, cookie or URL holds it, and
:meth:`Dashboard.render` blanks it out of anything job data might echo.

May use the framework's public reads (reports, requester, job, service) and
the client; nothing in the framework may import the dashboard.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import anyio
from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import escape
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from ..client import OADAClient
from ..control import Control, control_path, parse_control, set_paused
from ..exceptions import NotFound, OADAError, OADAJobsError, OADAStatusError, OADATransportError
from ..job import JobStatus, request_cancel
from ..reports import days_between
from ..requester import post_job
from ..service import Service
from ..tree import validate_service_name
from .chart import duration_chart, format_seconds
from .config import DashboardConfig
from .live import EventStream, Health, WatchHub
from .reads import JobReader, check_job_key
from .security import (
    LOOPBACK_HOSTS,
    GuardMiddleware,
    LoginThrottle,
    check_csrf,
    csrf_token,
)

__all__ = ["Dashboard", "create_dashboard_app"]

logger = logging.getLogger("oada_jobs.dashboard")

STATIC = Path(__file__).parent / "static"
#: The request header a page's script sends to get only the live part.
FRAGMENT_HEADER = "x-dashboard-fragment"
#: Statuses with a style of their own; any other is shown as ``other``.
_STATUS_CLASSES = frozenset(
    {
        *(status.value for status in JobStatus),
        # update statuses the framework writes
        "started",
        "progress",
        "retry",
        "delayed",
        "rescheduled",
        "error",
        # rows the dashboard could not read as jobs
        "invalid",
        "missing",
        "unreadable",
    }
)


class NotAJob(Exception):
    """A URL named no valid service or job (answered 404)."""


def _json_text(value: object, limit: int) -> str:
    text = json.dumps(value, indent=2, ensure_ascii=False, default=str)
    if len(text.encode()) > limit:
        cut = text.encode()[:limit].decode(errors="ignore")
        return f"{cut}\n… (cut at {limit} bytes)"
    return text


def _traceback(result: object) -> str | None:
    """A failed job's ``result.traceback`` (shown as text, not as a JSON string)."""
    text = result.get("traceback") if isinstance(result, Mapping) else None
    return text if isinstance(text, str) else None


def _without_traceback(result: object) -> object:
    if isinstance(result, Mapping) and isinstance(result.get("traceback"), str):
        return {key: value for key, value in result.items() if key != "traceback"}
    return result


def _status_class(status: object) -> str:
    return status if isinstance(status, str) and status in _STATUS_CLASSES else "other"


def _is_service_name(value: object) -> bool:
    try:
        validate_service_name(value)  # type: ignore[arg-type]
    except ValueError:
        return False
    return True


def _percent(fraction: float | None) -> str:
    return "" if fraction is None else f"{fraction * 100:.0f}%"


class Dashboard:
    """What the routes share: the OADA client, the reader, templates and limits."""

    def __init__(
        self,
        domain: str,
        token: str,
        config: DashboardConfig,
        services: Mapping[str, Service],
    ) -> None:
        self.domain = domain
        self._token = token
        # The token as it would appear in a page: as is, inside JSON, and
        # HTML-escaped (either way), so that blanking it out cannot miss.
        in_json = json.dumps(token)[1:-1]
        self._token_forms = sorted(
            {token, in_json, str(escape(token)), str(escape(in_json))}, key=len, reverse=True
        )
        self.config = config
        self.services = services
        self.health = Health()
        self.throttle = LoginThrottle(config.login_attempts_per_minute)
        self.streams = 0
        #: Set when the server begins to shut down: live streams end.
        self.stopping = anyio.Event()
        self._oada: OADAClient | None = None
        self._reader: JobReader | None = None
        self._hub: WatchHub | None = None
        self.templates = Environment(
            loader=PackageLoader("oada_jobs.dashboard", "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.templates.filters["json"] = lambda value: _json_text(value, config.max_json_bytes)
        self.templates.filters["seconds"] = format_seconds
        self.templates.filters["status_class"] = _status_class
        self.templates.filters["percent"] = _percent
        self.templates.filters["traceback"] = _traceback
        self.templates.filters["without_traceback"] = _without_traceback
        self.templates.tests["service_name"] = _is_service_name

    def stop_streams(self) -> None:
        """End the open live streams (the server is shutting down)."""
        self.stopping.set()

    @property
    def login_required(self) -> bool:
        return self.config.login_secret is not None

    @property
    def oada(self) -> OADAClient:
        if self._oada is None:
            raise RuntimeError("the dashboard is not running: its lifespan opens the OADA client")
        return self._oada

    @property
    def hub(self) -> WatchHub:
        if self._hub is None:
            raise RuntimeError("the dashboard is not running: its lifespan opens the OADA client")
        return self._hub

    @property
    def reader(self) -> JobReader:
        if self._reader is None:
            raise RuntimeError("the dashboard is not running: its lifespan opens the OADA client")
        return self._reader

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Open the OADA client for as long as the app serves."""
        client = OADAClient(
            self.domain,
            self._token,
            timeout=self.config.oada_timeout,
            connect_timeout=min(5.0, self.config.oada_timeout),
            retries=self.config.oada_retries,
            max_backoff=1.0,
            watch_deadline=self.config.watch_deadline,
        )
        async with client as oada, anyio.create_task_group() as group:
            self.stopping = anyio.Event()  # a fresh one for each run of the app
            self._oada = oada
            self._reader = JobReader(oada, self.config)
            self._hub = WatchHub(oada, self.config, group)
            try:
                yield
            finally:
                self._oada = self._reader = self._hub = None
                group.cancel_scope.cancel()

    def queues_known(self, service: str) -> Mapping[str, Any]:
        running = self.services.get(service)
        return running.queues if running is not None else {}

    def render(
        self, request: Request, template: str, status_code: int = 200, **context: Any
    ) -> HTMLResponse:
        """Render *template*; with the fragment header, only its ``live`` part.

        The OADA token is blanked out of the result, should job data echo it.
        """
        fragment = request.headers.get(FRAGMENT_HEADER) == "1"
        root: str = request.scope.get("root_path", "")
        router = request.app.router

        def url(name: str, **params: Any) -> str:
            return root + str(router.url_path_for(name, **params))

        html = self.templates.get_template(template).render(
            fragment=fragment,
            url=url,
            csrf=csrf_token(request),
            login_required=self.login_required,
            domain=self.domain,
            **context,
        )
        for form in self._token_forms:
            html = html.replace(form, "[token]")
        return HTMLResponse(html, status_code=status_code)

    def error(self, request: Request, status_code: int, message: str) -> HTMLResponse:
        return self.render(request, "error.html", status_code, message=message)

    def oada_error(self, request: Request, error: OADAError) -> HTMLResponse:
        if isinstance(error, OADATransportError) or not isinstance(error, OADAStatusError):
            self.health.failed()
            return self.error(
                request, 502, f"cannot reach the OADA server at {self.domain}: {error.message}"
            )
        return self.error(request, 502, f"the OADA server answered: {error.message}")


def _dashboard(request: Request) -> Dashboard:
    dashboard: Dashboard = request.app.state.dashboard
    return dashboard


def _service_param(request: Request) -> str:
    try:
        return validate_service_name(request.path_params["service"])
    except ValueError as error:
        raise NotAJob(str(error)) from None


def _key_param(request: Request) -> str:
    try:
        return check_job_key(request.path_params["key"])
    except ValueError as error:
        raise NotAJob(str(error)) from None


async def _form(request: Request) -> dict[str, str]:
    """The fields of a url-encoded form body (at most ``max_form_bytes``; else none)."""
    limit = _dashboard(request).config.max_form_bytes
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return {}
    if request.headers.get("content-type", "").split(";")[0].strip() != (
        "application/x-www-form-urlencoded"
    ):
        return {}
    fields = parse_qs(body.decode(errors="replace"), keep_blank_values=True)
    return {name: values[0] for name, values in fields.items() if values}


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
    dashboard = _dashboard(request)
    today = datetime.now(UTC).date()
    try:
        rows = await dashboard.reader.overview(today)
    except OADAError as error:
        return dashboard.oada_error(request, error)
    dashboard.health.recovered()
    return dashboard.render(request, "overview.html", services=rows, today=today)


async def service_page(request: Request) -> Response:
    dashboard = _dashboard(request)
    service = _service_param(request)
    start, end = _days(request, dashboard.config)
    today = datetime.now(UTC).date()
    try:
        page = await dashboard.reader.service_page(
            service, start, end, dashboard.queues_known(service)
        )
        control = await _control(dashboard.oada, service)
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
    dashboard = _dashboard(request)
    key = _key_param(request)
    try:
        detail = await dashboard.reader.job(key)
    except OADAError as error:
        return dashboard.oada_error(request, error)
    dashboard.health.recovered()
    if detail is None:
        return dashboard.error(request, 404, f"there is no job resources/{key}")
    return dashboard.render(request, "job.html", job=detail, data=detail.data)


_ACTIONS = {
    "cancel": "Cancel this job? A pending job is filed as a failure of type 'cancelled' at "
    "once; a running one within about a second.",
    "retry": "Post a new job with the same service, type, config and options?",
}


async def confirm_action(request: Request) -> Response:
    dashboard = _dashboard(request)
    key = _key_param(request)
    action = request.path_params["action"]
    if action not in _ACTIONS:
        return dashboard.error(request, 404, "no such action")
    try:
        detail = await dashboard.reader.job(key)
    except OADAError as error:
        return dashboard.oada_error(request, error)
    if detail is None:
        return dashboard.error(request, 404, f"there is no job resources/{key}")
    return dashboard.render(
        request, "confirm.html", job=detail, action=action, question=_ACTIONS[action]
    )


async def do_action(request: Request) -> Response:
    dashboard = _dashboard(request)
    key = _key_param(request)
    action = request.path_params["action"]
    if action not in _ACTIONS:
        return dashboard.error(request, 404, "no such action")
    form = await _form(request)
    if not check_csrf(request, form.get("csrf")):
        return dashboard.error(request, 403, "the form has expired or did not come from this page")
    job_url = request.app.router.url_path_for("job", key=key)
    root = request.scope.get("root_path", "")
    try:
        detail = await dashboard.reader.job(key)
        if detail is None or detail.job is None:
            return dashboard.error(request, 404, f"there is no job resources/{key} to {action}")
        job = detail.job
        if action == "cancel":
            cancelled = await request_cancel(
                dashboard.oada, job.oada_id, "cancelled in the dashboard"
            )
            logger.info("dashboard: cancel of %s asked (%s)", job.oada_id, cancelled)
            return RedirectResponse(root + str(job_url), status_code=303)
        if not detail.retryable:
            return dashboard.error(request, 409, "only a failed job can be retried")
        layout = await dashboard.reader.layout(job.service)
        options = job.options if job.options.to_json() else None
        new_id = await post_job(
            dashboard.oada,
            job.service,
            job.type,
            job.raw.get("config") or {},
            layout=layout.name,
            options=options,
            extra={"retryOf": {"_id": job.oada_id}},
        )
    except OADAError as error:
        return dashboard.oada_error(request, error)
    except OADAJobsError as error:
        # The job changed under the action (e.g. it kept changing while being
        # cancelled, or stopped being a job): say so rather than fail.
        return dashboard.error(request, 409, f"could not {action} resources/{key}: {error}")
    logger.info("dashboard: %s retried as %s", job.oada_id, new_id)
    new_url = request.app.router.url_path_for("job", key=new_id.removeprefix("resources/"))
    return RedirectResponse(root + str(new_url), status_code=303)


async def _control(oada: OADAClient, service: str) -> Control:
    """What the service's control resource says (nothing paused when it is missing)."""
    try:
        data = (await oada.get(control_path(service))).data
    except NotFound:
        return Control()
    return parse_control(data, Control())[0]


_CONTROL_ACTIONS = {
    "pause": "Stop starting jobs of {what} on every replica? Pending jobs stay pending; "
    "running ones finish.",
    "resume": "Start jobs of {what} again on every replica?",
}


def _control_request(request: Request, job_type: str) -> tuple[str, str] | Response:
    dashboard = _dashboard(request)
    action = request.path_params["action"]
    if action not in _CONTROL_ACTIONS:
        return dashboard.error(request, 404, "no such action")
    what = f"type {job_type!r}" if job_type else "every type"
    return action, _CONTROL_ACTIONS[action].format(what=what)


async def confirm_control(request: Request) -> Response:
    service = _service_param(request)
    job_type = request.query_params.get("type", "")
    checked = _control_request(request, job_type)
    if isinstance(checked, Response):
        return checked
    action, question = checked
    return _dashboard(request).render(
        request,
        "confirm_control.html",
        service=service,
        action=action,
        job_type=job_type,
        question=question,
    )


async def do_control(request: Request) -> Response:
    dashboard = _dashboard(request)
    service = _service_param(request)
    form = await _form(request)
    if not check_csrf(request, form.get("csrf")):
        return dashboard.error(request, 403, "the form has expired or did not come from this page")
    job_type = form.get("type", "")
    checked = _control_request(request, job_type)
    if isinstance(checked, Response):
        return checked
    action, _ = checked
    try:
        await set_paused(dashboard.oada, service, action == "pause", [job_type] if job_type else [])
    except ValueError as error:
        return dashboard.error(request, 400, str(error))
    except OADAError as error:
        return dashboard.oada_error(request, error)
    logger.info("dashboard: %s of %s (%s) asked", action, service, job_type or "every type")
    url = request.app.router.url_path_for("service", service=service)
    return RedirectResponse(request.scope.get("root_path", "") + str(url), status_code=303)


async def login_form(request: Request) -> Response:
    dashboard = _dashboard(request)
    if not dashboard.login_required:
        return RedirectResponse(request.scope.get("root_path", "") + "/", status_code=303)
    return dashboard.render(request, "login.html", failed=False)


async def login(request: Request) -> Response:
    dashboard = _dashboard(request)
    secret = dashboard.config.login_secret
    if secret is None:
        return RedirectResponse(request.scope.get("root_path", "") + "/", status_code=303)
    if dashboard.throttle.blocked():
        return PlainTextResponse("too many failed logins; wait a minute", status_code=429)
    form = await _form(request)
    given = form.get("secret", "")
    if not check_csrf(request, form.get("csrf")) or not secrets.compare_digest(
        given.encode(), secret.get_secret_value().encode()
    ):
        dashboard.throttle.failed()
        return dashboard.render(request, "login.html", 403, failed=True)
    request.session.clear()
    request.session["login"] = True
    return RedirectResponse(request.scope.get("root_path", "") + "/", status_code=303)


async def logout(request: Request) -> Response:
    form = await _form(request)
    if not check_csrf(request, form.get("csrf")):
        return PlainTextResponse("the form has expired", status_code=403)
    request.session.clear()
    return RedirectResponse(request.scope.get("root_path", "") + "/login", status_code=303)


class _Events:
    """``/events/...``: one live stream per open page (at most ``max_streams``)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        dashboard = _dashboard(request)
        reader = dashboard.reader
        if self.kind == "service":
            service = _service_param(request)

            async def paths() -> list[str]:
                return await reader.watch_paths(service)
        elif self.kind == "job":
            key = _key_param(request)

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
    return _dashboard(request).error(request, 404, str(error))


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

    session_key = (
        config.session_key.get_secret_value() if config.session_key else secrets.token_urlsafe(32)
    )
    routes = [
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
    app = Starlette(
        routes=routes,
        middleware=[
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
        ],
        exception_handlers={NotAJob: _not_found},
        lifespan=lifespan,
    )
    app.state.dashboard = dashboard
    return app
