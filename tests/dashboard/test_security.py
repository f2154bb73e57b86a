"""The dashboard's security rules, without a browser: bind, login, CSRF, origin,
headers, escaping, and the OADA token kept out of every page."""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from oada_jobs.cli import app as cli_app
from oada_jobs.client import OADAClient
from oada_jobs.control import control_path
from oada_jobs.dashboard import BindRefused, DashboardConfig, check_bind, serve_dashboard
from oada_jobs.dashboard.app import create_dashboard_app
from oada_jobs.dashboard.security import CSP, host_name
from oada_jobs.exceptions import NotFound
from oada_jobs.testing import EmbeddedServer, embedded_server, post_job

from .conftest import BASE, SECRET

ORIGIN = {"origin": BASE}


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF field in the page"
    return found.group(1)


# -- binding --------------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "::", "example.org"])
def test_non_loopback_bind_is_refused_without_allow_remote(host: str) -> None:
    with pytest.raises(BindRefused, match="not a loopback address"):
        check_bind(host, allow_remote=False, has_login=True)


def test_remote_bind_needs_a_login_secret() -> None:
    with pytest.raises(BindRefused, match="needs a login secret"):
        check_bind("0.0.0.0", allow_remote=True, has_login=False)
    check_bind("0.0.0.0", allow_remote=True, has_login=True)
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        check_bind(host, allow_remote=False, has_login=False)


async def test_serve_refuses_before_listening(server: EmbeddedServer) -> None:
    app = create_dashboard_app(server.url, server.token)
    with pytest.raises(BindRefused, match="not a loopback"):
        await serve_dashboard(app, host="0.0.0.0")
    with pytest.raises(BindRefused, match="needs a login secret"):
        await serve_dashboard(app, host="0.0.0.0", allow_remote=True)


def test_command_refuses_remote_bind_and_short_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OADA_TOKEN", "some-token")
    monkeypatch.delenv("OADA_JOBS_DASHBOARD_SECRET", raising=False)
    runner = CliRunner()
    args = ["dashboard", "--domain", "http://127.0.0.1:9", "--host", "0.0.0.0"]
    refused = runner.invoke(cli_app, args)
    assert refused.exit_code == 2
    assert "not a loopback address" in refused.output
    no_secret = runner.invoke(cli_app, [*args, "--allow-remote"])
    assert no_secret.exit_code == 2
    assert "needs a login secret" in no_secret.output
    short = runner.invoke(
        cli_app, [*args, "--allow-remote"], env={"OADA_JOBS_DASHBOARD_SECRET": "short"}
    )
    assert short.exit_code == 2
    assert "at least 16 characters" in short.output
    assert "short" not in short.output.replace("at least", "")


def test_config_refuses_a_short_login_secret() -> None:
    with pytest.raises(ValueError, match="at least 16"):
        DashboardConfig(login_secret="too-short")


# -- login ----------------------------------------------------------------


async def test_login_gates_every_page_and_sets_a_strict_httponly_cookie(
    open_dashboard: Callable[..., Any],
) -> None:
    async with open_dashboard(login_secret=SECRET) as (_app, http):
        for path in ("/", "/services/x", "/jobs/abc", "/jobs/abc/cancel"):
            response = await http.get(path)
            assert response.status_code == 303, path
            assert response.headers["location"] == "/login"
        assert (await http.get("/events")).status_code == 401
        assert (await http.post("/jobs/abc/cancel", headers=ORIGIN)).status_code == 401

        form = await http.get("/login")
        assert form.status_code == 200
        cookie = form.headers["set-cookie"].lower()
        assert "httponly" in cookie
        assert "samesite=strict" in cookie
        token = csrf_of(form.text)

        wrong = await http.post(
            "/login", data={"csrf": token, "secret": "not the secret at all"}, headers=ORIGIN
        )
        assert wrong.status_code == 403
        assert (await http.get("/")).status_code == 303

        no_csrf = await http.post("/login", data={"secret": SECRET}, headers=ORIGIN)
        assert no_csrf.status_code == 403

        right = await http.post("/login", data={"csrf": token, "secret": SECRET}, headers=ORIGIN)
        assert right.status_code == 303
        assert (await http.get("/")).status_code == 200

        logout_token = csrf_of((await http.get("/")).text)
        out = await http.post("/logout", data={"csrf": logout_token}, headers=ORIGIN)
        assert out.status_code == 303
        assert (await http.get("/")).status_code == 303


async def test_failed_logins_are_throttled(open_dashboard: Callable[..., Any]) -> None:
    async with open_dashboard(login_secret=SECRET, login_attempts_per_minute=3) as (_app, http):
        token = csrf_of((await http.get("/login")).text)
        for _ in range(3):
            bad = await http.post(
                "/login", data={"csrf": token, "secret": "x" * 20}, headers=ORIGIN
            )
            assert bad.status_code == 403
        blocked = await http.post("/login", data={"csrf": token, "secret": SECRET}, headers=ORIGIN)
        assert blocked.status_code == 429


# -- CSRF and origin ------------------------------------------------------


async def test_actions_need_the_session_csrf_token_and_a_same_origin(
    open_dashboard: Callable[..., Any], oada: OADAClient, name: str
) -> None:
    job_id = await post_job(oada, name, "work", {})
    key = job_id.removeprefix("resources/")
    async with open_dashboard() as (_app, http):
        confirm = await http.get(f"/jobs/{key}/cancel")
        assert confirm.status_code == 200
        token = csrf_of(confirm.text)
        refused = [
            await http.post(f"/jobs/{key}/cancel", data={"csrf": token}),  # no Origin
            await http.post(
                f"/jobs/{key}/cancel",
                data={"csrf": token},
                headers={"origin": "http://evil.example"},
            ),
            await http.post(
                f"/jobs/{key}/cancel", data={"csrf": token}, headers={"origin": "null"}
            ),
            await http.post(
                f"/jobs/{key}/cancel",
                data={"csrf": token},
                headers={**ORIGIN, "sec-fetch-site": "cross-site"},
            ),
            await http.post(f"/jobs/{key}/cancel", data={}, headers=ORIGIN),
            await http.post(f"/jobs/{key}/cancel", data={"csrf": token + "x"}, headers=ORIGIN),
            await http.post(
                f"/jobs/{key}/cancel",
                content=f'{{"csrf": "{token}"}}',
                headers={**ORIGIN, "content-type": "application/json"},
            ),
        ]
        assert [r.status_code for r in refused] == [403] * len(refused)
        assert (await oada.get(f"/{job_id}")).data.get("status") is None

        # Another session's token does not work either.
        async with httpx.AsyncClient(transport=http._transport, base_url=BASE) as other:
            other_token = csrf_of((await other.get(f"/jobs/{key}/cancel")).text)
        assert other_token != token
        crossed = await http.post(f"/jobs/{key}/cancel", data={"csrf": other_token}, headers=ORIGIN)
        assert crossed.status_code == 403

        done = await http.post(f"/jobs/{key}/cancel", data={"csrf": token}, headers=ORIGIN)
        assert done.status_code == 303
        assert done.headers["location"] == f"/jobs/{key}"
    assert (await oada.get(f"/{job_id}")).data["status"] == "cancel-requested"


async def test_a_foreign_host_header_is_refused(open_dashboard: Callable[..., Any]) -> None:
    async with open_dashboard() as (_app, http):
        for host in ("attacker.example", "attacker.example:8300", "127.0.0.1.evil:80", ""):
            response = await http.get("/", headers={"host": host})
            assert response.status_code == 400, host
            assert response.headers["content-security-policy"] == CSP
        for host in ("localhost:8300", "[::1]:8300", "127.0.0.1"):
            assert (await http.get("/", headers={"host": host})).status_code == 200, host
    async with open_dashboard(allowed_hosts=("jobs.example.org",)) as (_app, http):
        assert (await http.get("/", headers={"host": "jobs.example.org"})).status_code == 200
        assert (await http.get("/", headers={"host": "localhost"})).status_code == 400


def test_host_names_drop_the_port() -> None:
    assert host_name("LocalHost:8300") == "localhost"
    assert host_name("[::1]:8300") == "[::1]"
    assert host_name("[::1]") == "[::1]"
    assert host_name("127.0.0.1") == "127.0.0.1"
    assert host_name("::1") == "::1"


# -- headers, escaping, the token -----------------------------------------


async def test_every_page_has_the_security_headers_and_no_token(
    open_dashboard: Callable[..., Any],
    oada: OADAClient,
    server: EmbeddedServer,
    name: str,
) -> None:
    # Job data that echoes the token (e.g. a careless config) must not leak it either.
    parent = await post_job(oada, name, "work", {"note": f"token is {server.token}"})
    child = await post_job(oada, name, "work", {}, extra={"parent": {"_id": parent}})
    await oada.put(f"/{parent}/children", {child.removeprefix("resources/"): {"_id": child}})
    await oada.post(
        f"/bookmarks/services/{name}/queues",
        {"domain": "https://other.example", "token": "queue-secret-123"},
    )
    key = parent.removeprefix("resources/")
    paths = [
        "/",
        f"/services/{name}",
        f"/services/{name}?start=2026-01-01&end=2026-01-03",
        f"/jobs/{key}",
        f"/jobs/{key}/cancel",
        f"/jobs/{key}/retry",
        f"/jobs/{child.removeprefix('resources/')}",
        "/jobs/nope",
        "/jobs/..%2f..%2fbookmarks",
        "/services/bad%20name",
        f"/services/{name}?start=yesterday",
        f"/services/{name}?start=2020-01-01&end=2026-01-01",
        "/login",
        "/static/dashboard.js",
        "/static/dashboard.css",
        "/static/nope.js",
    ]
    async with open_dashboard() as (_app, http):
        for path in paths:
            for fragment in ({}, {"x-dashboard-fragment": "1"}):
                response = await http.get(path, headers=fragment)
                assert response.status_code < 500, (path, response.status_code)
                assert server.token not in response.text, path
                assert "queue-secret-123" not in response.text, path
                assert all(server.token not in value for value in response.headers.values())
                assert response.headers["content-security-policy"] == CSP, path
                assert response.headers["x-content-type-options"] == "nosniff"
                assert response.headers["x-frame-options"] == "DENY"
        job_page = (await http.get(f"/jobs/{key}")).text
        assert "token is [token]" in job_page
        assert "https://other.example" in (await http.get(f"/services/{name}")).text
    assert "'unsafe-inline'" not in CSP
    assert "script-src 'self'" in CSP


async def test_bad_urls_are_404_not_errors(open_dashboard: Callable[..., Any]) -> None:
    async with open_dashboard() as (_app, http):
        for path in (
            "/jobs/.hidden",
            "/jobs/a%2Fb",
            "/services/-x",
            "/services/%2e%2e",
            "/jobs/x/explode",
        ):
            response = await http.get(path)
            assert response.status_code == 404, path
        assert (await http.get("/services/x?start=2026-01-05&end=2026-01-01")).status_code == 404


async def test_job_data_is_escaped(
    open_dashboard: Callable[..., Any], oada: OADAClient, name: str
) -> None:
    evil = "<script>alert(1)</script><img src=x onerror=alert(2)>"
    job_id = await post_job(oada, name, evil, {"html": evil, evil: [evil]})
    await oada.put(
        f"/{job_id}",
        {"updates": {"k1": {"status": evil, "time": evil, "meta": evil}}, "status": evil},
    )
    key = job_id.removeprefix("resources/")
    async with open_dashboard() as (_app, http):
        for path in (f"/jobs/{key}", f"/services/{name}", f"/jobs/{key}/cancel"):
            html = (await http.get(path)).text
            assert "<script>alert" not in html, path
            assert "<img" not in html, path
            assert 'class="status other"' in html or path.endswith("cancel")
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in (await http.get(f"/jobs/{key}")).text


async def test_a_token_with_html_characters_is_blanked_in_every_form(name: str) -> None:
    token = f"tok&<en>\\{secrets.token_urlsafe(16)}"
    async with (
        embedded_server(tokens=[token]) as server,
        OADAClient(server.url, token) as oada,
    ):
        job_id = await post_job(oada, name, "work", {"echo": token, "html": f"<b>{token}</b>"})
        app = create_dashboard_app(server.url, token)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as http,
        ):
            html = (await http.get(f"/jobs/{job_id.removeprefix('resources/')}")).text
    assert "[token]" in html
    for form in (token, "tok&amp;&lt;en&gt;", "tok&<en>"):
        assert form not in html


async def test_an_oversized_form_is_not_read(
    open_dashboard: Callable[..., Any], oada: OADAClient, name: str
) -> None:
    key = (await post_job(oada, name, "work", {})).removeprefix("resources/")
    async with open_dashboard(max_form_bytes=2048) as (_app, http):
        token = csrf_of((await http.get(f"/jobs/{key}/cancel")).text)
        big = await http.post(
            f"/jobs/{key}/cancel", data={"csrf": token, "pad": "x" * 4096}, headers=ORIGIN
        )
        assert big.status_code == 403
        small = await http.post(
            f"/jobs/{key}/cancel", data={"csrf": token, "pad": "x" * 512}, headers=ORIGIN
        )
        assert small.status_code == 303


async def test_pause_and_resume_a_type_and_the_queue_from_the_service_page(
    server: EmbeddedServer, open_dashboard: Callable[..., Any]
) -> None:
    """Each is confirmed first, needs the CSRF token, and lands in the control resource."""
    async with (
        OADAClient(server.url, server.token, connection="http") as oada,
        open_dashboard() as (_, http),
    ):
        await post_job(oada, "svc", "email", {})
        page = await http.get("/services/svc")
        assert "Nothing is paused." in page.text
        confirm = await http.get("/services/svc/control/pause", params={"type": "email"})
        assert confirm.status_code == 200
        assert "type email of svc" in confirm.text
        token = csrf_of(confirm.text)
        refused = await http.post(
            "/services/svc/control/pause", data={"type": "email"}, headers=ORIGIN
        )
        assert refused.status_code == 403
        with pytest.raises(NotFound):  # nothing written
            await oada.get(control_path("svc"))
        done = await http.post(
            "/services/svc/control/pause", data={"csrf": token, "type": "email"}, headers=ORIGIN
        )
        assert done.status_code == 303
        control = (await oada.get(control_path("svc"))).data
        assert control["paused"]["types"] == {"email": True}
        assert "Paused: email." in (await http.get("/services/svc")).text
        # The whole queue, then resume everything.
        token = csrf_of((await http.get("/services/svc/control/pause")).text)
        await http.post("/services/svc/control/pause", data={"csrf": token}, headers=ORIGIN)
        assert "Every type is paused." in (await http.get("/services/svc")).text
        token = csrf_of((await http.get("/services/svc/control/resume")).text)
        await http.post("/services/svc/control/resume", data={"csrf": token}, headers=ORIGIN)
        control = (await oada.get(control_path("svc"))).data
        assert control["paused"]["all"] is False
        assert control["paused"]["types"] == {"email": False}
        assert "Nothing is paused." in (await http.get("/services/svc")).text
        assert (await http.get("/services/svc/control/stop")).status_code == 404
