"""The dashboard's security rules, each decided in one place.

* :func:`check_bind` — which addresses the dashboard may listen on.
* :class:`GuardMiddleware` — every request: security headers (a strict
  Content-Security-Policy: scripts and styles from the dashboard's own static
  files only), the ``Host`` check, the login gate, and the ``Origin`` check
  of every unsafe method.
* :func:`csrf_token` / :func:`check_csrf` — the per-session token every POST
  form carries.
* :class:`LoginThrottle` — failed logins per minute.

The OADA token never passes through here: it stays in the server's client.

Must not import the rest of the dashboard, the framework or the client.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
import time
from collections import deque
from collections.abc import Mapping
from urllib.parse import urlsplit

from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..exceptions import OADAJobsError

__all__ = [
    "CSP",
    "LOOPBACK_HOSTS",
    "BindRefused",
    "GuardMiddleware",
    "LoginThrottle",
    "check_bind",
    "check_csrf",
    "csrf_token",
    "host_name",
    "is_loopback",
    "logged_in",
]

#: ``Host`` names of a dashboard bound to loopback.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)

_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
    "permissions-policy": "camera=(), microphone=(), geolocation=()",
}

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Paths anyone may open: the login form and the static files it needs.
_PUBLIC = ("/login", "/static/")


class BindRefused(OADAJobsError):
    """Raised when the dashboard is asked to listen where it must not."""


def is_loopback(host: str) -> bool:
    """Whether *host* (a name or an address) only reaches this machine."""
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, *, allow_remote: bool, has_login: bool) -> None:
    """Refuse to listen on a non-loopback *host* unless asked, and then only with a login.

    Raises :class:`BindRefused` saying what to do.
    """
    if is_loopback(host):
        return
    if not allow_remote:
        raise BindRefused(
            f"refusing to listen on {host!r}: it is not a loopback address. The dashboard "
            "can cancel and retry jobs with its OADA token; to serve it to other machines "
            "pass --allow-remote and a login secret"
        )
    if not has_login:
        raise BindRefused(
            f"listening on {host!r} needs a login secret: set OADA_JOBS_DASHBOARD_SECRET "
            "(or pass --login-secret)"
        )


def logged_in(scope: Scope) -> bool:
    session = scope.get("session")
    return isinstance(session, Mapping) and session.get("login") is True


def csrf_token(request: Request) -> str:
    """The session's CSRF token, made on first use."""
    token = request.session.get("csrf")
    if not isinstance(token, str) or len(token) < 32:
        token = secrets.token_urlsafe(32)
        request.session["csrf"] = token
    return token


def check_csrf(request: Request, submitted: object) -> bool:
    """Whether *submitted* (a form's ``csrf`` field) is the session's token."""
    expected = request.session.get("csrf")
    if not isinstance(expected, str) or not isinstance(submitted, str) or not submitted:
        return False
    return hmac.compare_digest(expected.encode(), submitted.encode())


def _same_origin(headers: Headers) -> bool:
    """An unsafe request must come from a page of this dashboard.

    The ``Origin`` header (sent by browsers with every POST) must name the
    host the request is addressed to; without it the ``Referer`` must. A
    request with neither is refused. ``Sec-Fetch-Site``, when sent, must say
    ``same-origin``.
    """
    site = headers.get("sec-fetch-site")
    if site is not None and site != "same-origin":
        return False
    source = headers.get("origin") or headers.get("referer")
    if not source or source == "null":
        return False
    parts = urlsplit(source)
    host = headers.get("host")
    return parts.scheme in ("http", "https") and host is not None and parts.netloc == host


def host_name(header: str) -> str:
    """The host name of a ``Host`` header, without its port (IPv6 in brackets kept)."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[: header.find("]") + 1] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class GuardMiddleware:
    """Headers on every response, the host check, the login gate, and the
    origin check of unsafe methods."""

    def __init__(
        self, app: ASGIApp, *, login_required: bool, allowed_hosts: tuple[str, ...]
    ) -> None:
        self.app = app
        self.login_required = login_required
        self.allowed_hosts = frozenset(host.lower() for host in allowed_hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in _HEADERS.items():
                    headers[name] = value
                headers.setdefault("cache-control", "no-store")
            await send(message)

        headers = Headers(scope=scope)
        if "*" not in self.allowed_hosts and (
            host_name(headers.get("host", "")) not in self.allowed_hosts
        ):
            # A page on another name resolving here (DNS rebinding) gets nothing.
            response: Response = PlainTextResponse("unknown host name", status_code=400)
            await response(scope, receive, send_with_headers)
            return
        path = scope["path"].removeprefix(scope.get("root_path", ""))
        method = scope["method"]
        if self.login_required and not logged_in(scope) and not path.startswith(_PUBLIC):
            if method in _SAFE_METHODS and not path.startswith("/events"):
                root = scope.get("root_path", "")
                response = RedirectResponse(f"{root}/login", status_code=303)
            else:
                response = PlainTextResponse("log in first", status_code=401)
            await response(scope, receive, send_with_headers)
            return
        if method not in _SAFE_METHODS and not _same_origin(headers):
            response = PlainTextResponse(
                "refused: this request did not come from a dashboard page", status_code=403
            )
            await response(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)


class LoginThrottle:
    """Counts failed logins over the last minute (all clients together)."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._failures: deque[float] = deque()

    def _trim(self, now: float) -> None:
        while self._failures and now - self._failures[0] > 60:
            self._failures.popleft()

    def blocked(self) -> bool:
        self._trim(time.monotonic())
        return len(self._failures) >= self.per_minute

    def failed(self) -> None:
        self._failures.append(time.monotonic())
