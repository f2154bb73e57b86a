"""What the dashboard's routes share: the :class:`Dashboard` (client, reader,
templates, limits) and reading a request's parameters and form.

Owns rendering (Jinja2 with autoescaping on, and the template filters) and
the checks of a URL's service name and job key and of a form body's size.
:meth:`Dashboard.render` blanks the OADA token out of anything job data
might echo. Must not import the routes (``app.py``, ``actions.py``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import anyio
from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import escape
from starlette.requests import Request
from starlette.responses import HTMLResponse

from ..client import OADAClient
from ..exceptions import OADAError, OADAStatusError, OADATransportError
from ..job import JobStatus
from ..service import Service
from ..tree import validate_service_name
from .chart import format_seconds
from .config import DashboardConfig
from .live import Health, WatchHub
from .reads import JobReader, check_job_key
from .security import (
    LoginThrottle,
    csrf_token,
)

__all__ = [
    "FRAGMENT_HEADER",
    "STATIC",
    "Dashboard",
    "NotAJob",
    "dashboard_of",
    "key_param",
    "read_form",
    "service_param",
]

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


def dashboard_of(request: Request) -> Dashboard:
    dashboard: Dashboard = request.app.state.dashboard
    return dashboard


def service_param(request: Request) -> str:
    try:
        return validate_service_name(request.path_params["service"])
    except ValueError as error:
        raise NotAJob(str(error)) from None


def key_param(request: Request) -> str:
    try:
        return check_job_key(request.path_params["key"])
    except ValueError as error:
        raise NotAJob(str(error)) from None


async def read_form(request: Request) -> dict[str, str]:
    """The fields of a url-encoded form body (at most ``max_form_bytes``; else none)."""
    limit = dashboard_of(request).config.max_form_bytes
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
