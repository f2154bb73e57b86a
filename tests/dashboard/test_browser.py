"""The dashboard in a real browser: jobs appear and move live, cancel and retry
work through their confirmation step, and a config holding a script stays inert."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import pytest
from prometheus_client import CollectorRegistry

from oada_jobs import JobError, Service
from oada_jobs.client import OADAClient
from oada_jobs.dashboard import DashboardHandle, create_dashboard_app, serve_dashboard
from oada_jobs.runner import WorkerContext
from oada_jobs.testing import EmbeddedServer, embedded_server, post_job, wait_for_job

from .browser import CHROMIUM, CHROMIUM_ARGS, require_chromium
from .conftest import FAST

require_chromium()

from playwright.async_api import Browser, ConsoleMessage, Dialog, Page, async_playwright, expect  # noqa: E402

EVIL = "<script>alert('from config')</script><img src=x onerror=alert('img')>"
#: Seconds a live change may take to show (the page re-renders within a fraction of that).
LIVE = 10_000


class Gates:
    """Lets the test decide when each ``work`` job may finish."""

    def __init__(self) -> None:
        self.gates: dict[str, anyio.Event] = {}

    def gate(self, name: str) -> anyio.Event:
        return self.gates.setdefault(name, anyio.Event())


def make_workers(service: Service, gates: Gates) -> None:
    async def work(job: Any, ctx: WorkerContext) -> Any:
        await ctx.progress(0.4, "halfway there")
        await gates.gate(job.config.get("gate", "")).wait()
        return {"done": job.config.get("gate")}

    async def boom(job: Any, ctx: WorkerContext) -> Any:
        raise JobError("it broke", "bad-input")

    async def fanout(job: Any, ctx: WorkerContext) -> Any:
        child = await ctx.post_job(job.service, "quick", {})
        return {"child": child}

    async def quick(job: Any, ctx: WorkerContext) -> Any:
        return {"quick": True}

    service.on("work", 30, work)
    service.on("boom", 10, boom, tries=1)
    service.on("fanout", 10, fanout)
    service.on("quick", 10, quick)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def running(
    server: EmbeddedServer, make_service: Callable[..., Service]
) -> AsyncIterator[tuple[Service, DashboardHandle, Gates]]:
    gates = Gates()
    service = make_service()
    make_workers(service, gates)
    async with service, anyio.create_task_group() as group:
        app = create_dashboard_app(server.url, server.token, services=[service])
        handle = await group.start(serve_dashboard, app)
        try:
            yield service, handle, gates
        finally:
            for event in gates.gates.values():
                event.set()
            handle.shutdown()


class Watcher:
    """What a page did that it must not: dialogs, CSP violations, script errors."""

    def __init__(self, page: Page) -> None:
        self.dialogs: list[str] = []
        self.problems: list[str] = []
        page.on("dialog", self._dialog)
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.problems.append(str(error)))

    async def _dialog(self, dialog: Dialog) -> None:
        self.dialogs.append(dialog.message)
        await dialog.dismiss()

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.problems.append(message.text)


async def test_jobs_move_live_and_can_be_cancelled_and_retried(
    browser: Browser,
    running: tuple[Service, DashboardHandle, Gates],
    oada: OADAClient,
    name: str,
    server: EmbeddedServer,
) -> None:
    _service, dashboard, gates = running
    page = await browser.new_page()
    watcher = Watcher(page)

    # The service page, opened before any job exists.
    await page.goto(f"{dashboard.url}/services/{name}")
    live = page.locator("#live")
    await expect(live).to_have_attribute("data-stream", "open", timeout=LIVE)
    await expect(page.locator("#queues")).to_contain_text("yes")
    await expect(page.locator("#count-success")).to_have_text("0")

    # A job appears, starts (with its progress) and finishes, all without a reload.
    first = (await post_job(oada, name, "work", {"gate": "first"})).removeprefix("resources/")
    row = page.locator(f"#pending tr[data-key='{first}']")
    await expect(row).to_contain_text("running", timeout=LIVE)
    await expect(row.locator("progress")).to_have_attribute("value", "0.4", timeout=LIVE)
    await expect(page.locator("#count-running")).to_have_text("1")
    gates.gate("first").set()
    await expect(page.locator(f"#finished tr[data-key='{first}']")).to_contain_text(
        "success", timeout=LIVE
    )
    await expect(page.locator("#count-success")).to_have_text("1")
    await expect(page.locator(f"#pending tr[data-key='{first}']")).to_have_count(0)
    await expect(page.locator("figure.chart rect.bar")).to_have_count(1)

    # A failing job whose config holds a script: listed as a failure by type,
    # and its page shows the script as text.
    evil = (await post_job(oada, name, "boom", {"html": EVIL})).removeprefix("resources/")
    await expect(page.locator(f"#finished tr[data-key='{evil}']")).to_contain_text(
        "failure", timeout=LIVE
    )
    await expect(page.locator("#fail-types")).to_contain_text("bad-input")
    await expect(page.locator("#by-type")).to_contain_text("boom")
    await page.locator(f"#finished tr[data-key='{evil}'] a").click()
    await expect(page.locator("#job-status")).to_have_text("failure")
    await expect(page.locator("#config")).to_contain_text(EVIL)
    await expect(page.locator("#result")).to_contain_text("it broke")
    await expect(page.locator("#updates li")).not_to_have_count(0)
    assert await page.locator("#live img, #live script").count() == 0

    # Retry it: a confirmation page, then the new job's page, linked to the old one.
    await page.locator("#retry").click()
    await expect(page.locator("h1")).to_contain_text("Retry job")
    await page.locator("#confirm").click()
    await expect(page.locator("#retry-of")).to_have_text(evil)
    retried = page.url.rsplit("/", 1)[-1]
    assert retried != evil
    await expect(page.locator("#job-status")).to_have_text("failure", timeout=LIVE)
    await expect(page.locator("#config")).to_contain_text(EVIL)
    data = (await oada.get(f"/resources/{retried}")).data
    assert (data["service"], data["type"], data["config"]) == (name, "boom", {"html": EVIL})

    # Cancel a running job from its page; the page follows it to its end.
    second = (await post_job(oada, name, "work", {"gate": "never"})).removeprefix("resources/")
    await page.goto(f"{dashboard.url}/jobs/{second}")
    await expect(page.locator("#live")).to_have_attribute("data-stream", "open", timeout=LIVE)
    await expect(page.locator("#job-status")).to_have_text("running", timeout=LIVE)
    await expect(page.locator("#progress")).to_have_attribute("value", "0.4", timeout=LIVE)
    await page.locator("#cancel").click()
    await expect(page.locator("h1")).to_contain_text("Cancel job")
    await page.locator("#confirm").click()
    await expect(page.locator("#job-status")).to_have_text("failure", timeout=LIVE)
    await expect(page.locator("#updates")).to_contain_text("cancel-requested")
    await expect(page.locator("#result")).to_contain_text("cancelled")

    # Parent and child link to each other.
    parent = (await post_job(oada, name, "fanout", {})).removeprefix("resources/")
    await page.goto(f"{dashboard.url}/jobs/{parent}")
    child_link = page.locator("#children a")
    await expect(child_link).to_have_count(1, timeout=LIVE)
    await child_link.click()
    await expect(page.locator("#parent")).to_have_text(parent)

    # The overview lists the service with today's counts.
    await page.goto(dashboard.url)
    await expect(page.locator("#services")).to_contain_text(name)

    assert watcher.dialogs == []
    assert watcher.problems == []
    await page.close()


async def test_a_live_page_stays_correct_across_an_oada_restart(
    browser: Browser, name: str
) -> None:
    gates = Gates()
    async with embedded_server(subprocess=True, tokens=[secrets.token_urlsafe(24)]) as oada_server:
        service = Service(
            name,
            domain=oada_server.url,
            token=oada_server.token,
            metrics_registry=CollectorRegistry(),
            **FAST,
        )
        make_workers(service, gates)
        async with service, anyio.create_task_group() as group:
            app = create_dashboard_app(oada_server.url, oada_server.token, services=[service])
            dashboard = await group.start(serve_dashboard, app)
            page = await browser.new_page()
            watcher = Watcher(page)
            await page.goto(f"{dashboard.url}/services/{name}")
            await expect(page.locator("#live")).to_have_attribute(
                "data-stream", "open", timeout=LIVE
            )
            async with OADAClient(oada_server.url, oada_server.token) as oada:
                await post_job(oada, name, "quick", {})
            await expect(page.locator("#count-success")).to_have_text("1", timeout=LIVE)

            await oada_server.kill()
            await oada_server.restart()

            # Changes made after the restart still reach the open page.
            async with OADAClient(oada_server.url, oada_server.token) as oada:
                after = (await post_job(oada, name, "quick", {})).removeprefix("resources/")
            await expect(page.locator(f"#finished tr[data-key='{after}']")).to_contain_text(
                "success", timeout=3 * LIVE
            )
            await expect(page.locator("#count-success")).to_have_text("2")
            await expect(page.locator("#banner")).to_be_hidden()
            assert watcher.dialogs == []
            await page.close()
            dashboard.shutdown()


async def test_a_live_page_reads_afresh_when_its_stream_reconnects(
    browser: Browser,
    server: EmbeddedServer,
    make_service: Callable[..., Service],
    oada: OADAClient,
    name: str,
) -> None:
    gates = Gates()
    service = make_service()
    make_workers(service, gates)
    async with service:
        page = await browser.new_page()
        async with anyio.create_task_group() as group:
            first = await group.start(
                serve_dashboard, create_dashboard_app(server.url, server.token)
            )
            await page.goto(f"{first.url}/services/{name}")
            await expect(page.locator("#live")).to_have_attribute(
                "data-stream", "open", timeout=LIVE
            )
            first.shutdown()
        await expect(page.locator("#live")).to_have_attribute("data-stream", "reconnecting")

        # A job finishes while the dashboard is down: nothing is watching.
        missed = (await post_job(oada, name, "quick", {})).removeprefix("resources/")
        await wait_for_job(oada, f"resources/{missed}", timeout=10)

        async with anyio.create_task_group() as group:
            second = await group.start(
                lambda task_status: serve_dashboard(
                    create_dashboard_app(server.url, server.token),
                    port=first.port,
                    task_status=task_status,
                )
            )
            # The browser reconnects by itself and the page reads afresh.
            await expect(page.locator(f"#finished tr[data-key='{missed}']")).to_contain_text(
                "success", timeout=LIVE
            )
            await expect(page.locator("#live")).to_have_attribute("data-stream", "open")
            await page.close()
            second.shutdown()
