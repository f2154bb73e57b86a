"""Make the screenshots of docs/dashboard.md: ``python docs/screenshots.py docs/img``.

Starts an embedded OADA server, a service with a few job types and the
dashboard (all in this process), runs a mix of jobs through them, and
photographs the main pages with headless Chromium (Debian's ``chromium``,
driven by Playwright; ``make browser`` installs it). ``make screenshots``
runs it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import anyio
from playwright.async_api import Page, async_playwright, expect

from oada_jobs import JobError, Service, WorkerContext
from oada_jobs.client import OADAClient
from oada_jobs.dashboard import create_dashboard_app, serve_dashboard
from oada_jobs.testing import embedded_server, post_job, wait_for_job

SERVICE = "email-service"
CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def make_service(url: str, token: str, hold: anyio.Event) -> Service:
    service = Service(SERVICE, domain=url, token=token, sweep_interval=3600, shutdown_grace=1)

    async def email(job: Any, ctx: WorkerContext) -> Any:
        to = job.config.get("to", "")
        await ctx.progress(0.3, "connecting to the mail server")
        await anyio.sleep(float(job.config.get("seconds", 0.1)))
        if to.endswith(".invalid"):
            raise JobError(f"no such domain: {to}", "recipient-refused")
        if job.config.get("hold"):
            await ctx.progress(0.6, "sending 3 of 5 attachments")
            await hold.wait()
        return {"sent": True, "to": to}

    async def digest(job: Any, ctx: WorkerContext) -> Any:
        for address in job.config.get("to", []):
            await ctx.post_job(SERVICE, "email", {"to": address, "seconds": 0.05})
        return {"posted": len(job.config.get("to", []))}

    service.on("email", 10, email, tries=1)
    service.on("digest", 10, digest)
    return service


async def shoot(page: Page, url: str, path: Path) -> None:
    await page.goto(url)
    await expect(page.locator("#live")).to_have_attribute("data-stream", "open")
    await page.wait_for_timeout(400)  # let the first live re-render land
    await page.screenshot(path=str(path), full_page=True)
    print(f"wrote {path}")


async def main(out: Path) -> None:
    hold = anyio.Event()
    async with embedded_server() as server:
        service = make_service(server.url, server.token, hold)
        async with service, OADAClient(server.url, server.token) as oada:
            jobs = []
            for n, seconds in enumerate([0.2, 0.5, 0.3, 0.9, 0.4, 0.7, 0.25, 0.6]):
                jobs.append(
                    await post_job(
                        oada, SERVICE, "email", {"to": f"user{n}@example.org", "seconds": seconds}
                    )
                )
            failed = await post_job(
                oada,
                SERVICE,
                "email",
                {"to": "ops@mail.invalid", "subject": "<b>weekly</b> report"},
            )
            parent = await post_job(
                oada, SERVICE, "digest", {"to": ["a@example.org", "b@example.org"]}
            )
            for job_id in [*jobs, failed, parent]:
                await wait_for_job(oada, job_id, timeout=20)
            running = await post_job(
                oada, SERVICE, "email", {"to": "big@example.org", "hold": True, "seconds": 0}
            )
            await post_job(
                oada,
                SERVICE,
                "email",
                {"to": "later@example.org"},
                options={"notBefore": "2099-01-01T00:00:00Z"},
            )
            app = create_dashboard_app(server.url, server.token, services=[service])
            async with anyio.create_task_group() as group:
                dashboard = await group.start(serve_dashboard, app)
                async with async_playwright() as playwright:
                    browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                    page = await browser.new_page(viewport={"width": 1180, "height": 800})
                    base = dashboard.url
                    await shoot(page, f"{base}/", out / "dashboard-overview.png")
                    await shoot(page, f"{base}/services/{SERVICE}", out / "dashboard-service.png")
                    await shoot(
                        page,
                        f"{base}/{running}".replace("/resources/", "/jobs/"),
                        out / "dashboard-job-running.png",
                    )
                    await shoot(
                        page,
                        f"{base}/{failed}".replace("/resources/", "/jobs/"),
                        out / "dashboard-job-failed.png",
                    )
                    await page.goto(f"{base}/{failed}/retry".replace("/resources/", "/jobs/"))
                    await page.screenshot(path=str(out / "dashboard-confirm.png"), full_page=True)
                    print(f"wrote {out / 'dashboard-confirm.png'}")
                    await browser.close()
                hold.set()
                dashboard.shutdown()


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/img")
    target.mkdir(parents=True, exist_ok=True)
    anyio.run(main, target)
