"""What the dashboard's pages show, for both job-list layouts, and its live stream."""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from oada_jobs import JobError, Service
from oada_jobs.client import OADAClient
from oada_jobs.dashboard import create_dashboard_app, serve_dashboard
from oada_jobs.dashboard.app import STATIC
from oada_jobs.dashboard.chart import duration_chart, format_seconds
from oada_jobs.dashboard.config import DashboardConfig
from oada_jobs.reports import JobRecord
from oada_jobs.runner import WorkerContext
from oada_jobs.testing import EmbeddedServer, embedded_server, post_job, wait_for_job


def count(html: str, name: str) -> int:
    found = re.search(rf'id="count-{name}">(\d+)<', html)
    assert found, f"no {name} count on the page"
    return int(found.group(1))


async def ok(job: Any, ctx: WorkerContext) -> Any:
    await ctx.progress(1.0, "all done")
    return {"ok": True}


async def bad(job: Any, ctx: WorkerContext) -> Any:
    raise JobError("no", "smtp-rejected")


@pytest.mark.parametrize("layout", ["classic", "pending"])
async def test_service_page_counts_both_layouts(
    layout: Any,
    make_service: Callable[..., Service],
    oada: OADAClient,
    name: str,
    open_dashboard: Callable[..., Any],
) -> None:
    service = make_service(layout=layout)
    service.on("ok", 10, ok)
    service.on("bad", 10, bad, tries=1)
    async with service:
        done = [await post_job(oada, name, kind, {}, layout=layout) for kind in ("ok", "ok", "bad")]
        for job_id in done:
            await wait_for_job(oada, job_id, timeout=10, filed=layout)
        async with open_dashboard(services=(service,)) as (_app, http):
            html = (await http.get(f"/services/{name}")).text
            assert f"{layout} layout" in html
            assert (count(html, "success"), count(html, "failure")) == (2, 1)
            assert count(html, "pending") == 0
            assert "smtp-rejected" in html
            for job_id in done:
                assert job_id.removeprefix("resources/") in html
            assert html.count('<rect class="bar') == 3

            overview = (await http.get("/")).text
            assert name in overview
            assert f"<td>{layout}</td>" in overview

            week = re.search(r'href="([^"]+)" id="last-7-days"', html)
            assert week
            last_week = (await http.get(week.group(1).replace("&amp;", "&"))).text
            assert (count(last_week, "success"), count(last_week, "failure")) == (2, 1)
            assert "finished 20" in last_week  # a range, not one day

            yesterday = (datetime.now(UTC).date() - timedelta(days=1)).isoformat()
            earlier = (await http.get(f"/services/{name}?start={yesterday}")).text
            assert (count(earlier, "success"), count(earlier, "failure")) == (0, 0)

            job = (await http.get(f"/jobs/{done[0].removeprefix('resources/')}")).text
            assert 'id="progress" value="1.0"' in job
            assert "all done" in job
            assert 'id="cancel"' not in job
            assert 'id="retry"' not in job
            failed = (await http.get(f"/jobs/{done[2].removeprefix('resources/')}")).text
            assert 'id="retry"' in failed
    # A job waiting for a service that is not running is pending, not running.
    waiting = await post_job(oada, name, "ok", {}, layout=layout)
    async with open_dashboard() as (_app, http):
        html = (await http.get(f"/services/{name}")).text
        assert count(html, "pending") == 1
        assert count(html, "running") == 0
        assert waiting.removeprefix("resources/") in html
        assert "unknown" in html  # no service in this process: watching is unknown


def test_chart_scales_bars_to_the_longest() -> None:
    def record(key: str, status: str, duration: float | None) -> JobRecord:
        return JobRecord(
            f"resources/{key}",
            key,
            "2026-01-01",
            status,
            "t",
            None,
            "s",
            f"2026-01-01T00:00:0{key}",
            duration,
            1,
        )

    chart = duration_chart(
        [record("1", "success", 2.0), record("2", "failure", 1.0), record("3", "success", None)]
    )
    assert [bar.key for bar in chart.bars] == ["1", "2"]
    assert chart.bars[0].height == pytest.approx(2 * chart.bars[1].height)
    assert chart.top_label == "2.0 s"
    assert [format_seconds(s) for s in (0.25, 12.34, 600, 9000, None)] == [
        "250 ms",
        "12.3 s",
        "10.0 min",
        "2.5 h",
        "-",
    ]


async def events(response: httpx.Response) -> Any:
    async for line in response.aiter_lines():
        if line.startswith("event: "):
            yield line.removeprefix("event: ")


async def test_the_event_stream_says_changed_on_open_and_on_each_change(
    server: EmbeddedServer, oada: OADAClient, name: str
) -> None:
    app = create_dashboard_app(server.url, server.token, config=DashboardConfig(max_streams=1))
    async with anyio.create_task_group() as group:
        dashboard = await group.start(serve_dashboard, app)
        async with (
            httpx.AsyncClient(base_url=dashboard.url, timeout=10) as http,
            http.stream("GET", f"/events/services/{name}") as stream,
        ):
            assert stream.headers["content-type"].startswith("text/event-stream")
            names = events(stream)
            with anyio.fail_after(10):
                assert await anext(names) == "changed"
            # One stream only: a second is refused.
            assert (await http.get(f"/events/services/{name}")).status_code == 503
            await post_job(oada, name, "ok", {})
            with anyio.fail_after(10):
                assert await anext(names) == "changed"
        dashboard.shutdown()


async def test_the_app_can_be_mounted_under_a_prefix(
    server: EmbeddedServer, oada: OADAClient, name: str
) -> None:
    key = (await post_job(oada, name, "ok", {})).removeprefix("resources/")
    dashboard = create_dashboard_app(
        server.url, server.token, config=DashboardConfig(login_secret="a login secret, long enough")
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with dashboard.router.lifespan_context(dashboard):
            yield

    host = Starlette(routes=[Mount("/dash", dashboard)], lifespan=lifespan)
    async with (
        host.router.lifespan_context(host),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=host), base_url="http://127.0.0.1:9000"
        ) as http,
    ):
        gate = await http.get("/dash/")
        assert (gate.status_code, gate.headers["location"]) == (303, "/dash/login")
        form = await http.get("/dash/login")
        token = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert token
        assert 'action="/dash/login"' in form.text
        login = await http.post(
            "/dash/login",
            data={"csrf": token.group(1), "secret": "a login secret, long enough"},
            headers={"origin": "http://127.0.0.1:9000"},
        )
        assert (login.status_code, login.headers["location"]) == (303, "/dash/")
        html = (await http.get(f"/dash/services/{name}")).text
        assert 'href="/dash/static/dashboard.css"' in html
        assert f'data-events="/dash/events/services/{name}"' in html
        assert f'href="/dash/jobs/{key}"' in html
        assert (await http.get("/dash/static/dashboard.js")).status_code == 200


def test_the_page_script_never_polls() -> None:
    script = (STATIC / "dashboard.js").read_text()
    for timer in ("setInterval", "setTimeout", "eval(", "new Function"):
        assert timer not in script, timer
    assert "new EventSource(" in script


async def test_a_stream_says_changed_when_oada_answers_again(name: str) -> None:
    async with embedded_server(subprocess=True, tokens=[secrets.token_urlsafe(24)]) as oada_server:
        app = create_dashboard_app(oada_server.url, oada_server.token)
        async with anyio.create_task_group() as group:
            dashboard = await group.start(serve_dashboard, app)
            async with (
                httpx.AsyncClient(base_url=dashboard.url, timeout=30) as http,
                http.stream("GET", f"/events/services/{name}") as stream,
            ):
                names = events(stream)
                with anyio.fail_after(10):
                    assert await anext(names) == "changed"
                await oada_server.kill()
                # A read while OADA is down: the page says so ...
                with anyio.fail_after(20):
                    down = await http.get(
                        f"/services/{name}", headers={"x-dashboard-fragment": "1"}
                    )
                assert down.status_code == 502
                assert "cannot reach the OADA server" in down.text
                # ... and once OADA is back the stream tells the page to read again,
                # though nothing changed in OADA.
                await oada_server.restart()
                with anyio.fail_after(20):
                    assert await anext(names) == "changed"
                up = await http.get(f"/services/{name}", headers={"x-dashboard-fragment": "1"})
                assert up.status_code == 200
            dashboard.shutdown()


async def test_pages_showing_the_same_paths_share_their_watches(
    server: EmbeddedServer, oada: OADAClient, name: str
) -> None:
    await post_job(oada, name, "ok", {})
    app = create_dashboard_app(server.url, server.token)
    hub = lambda: app.state.dashboard.hub  # noqa: E731 -- the hub exists while it runs
    async with anyio.create_task_group() as group:
        dashboard = await group.start(serve_dashboard, app)
        async with httpx.AsyncClient(base_url=dashboard.url, timeout=10) as http:
            async with http.stream("GET", f"/events/services/{name}") as one:
                with anyio.fail_after(10):
                    assert await anext(events(one)) == "changed"
                watched = hub().paths()
                assert f"/bookmarks/services/{name}" in watched
                assert len(watched) >= 6  # the lists, the queues and the pending job
                async with http.stream("GET", f"/events/services/{name}") as two:
                    with anyio.fail_after(10):
                        assert await anext(events(two)) == "changed"
                    assert hub().paths() == watched
                    async with http.stream("GET", "/events") as overview:
                        with anyio.fail_after(10):
                            assert await anext(events(overview)) == "changed"
                        assert "/bookmarks/services" in hub().paths()
            # Every page closed: every watch ends (the server learns of each
            # closed stream on its own time; nothing here can be awaited).
            with anyio.fail_after(10):
                while hub().paths():
                    await anyio.sleep(0.05)
        dashboard.shutdown()
