"""Without the ``otel`` extra: nothing of OpenTelemetry is imported, and jobs run.

Runs whether or not OpenTelemetry is installed: the child process hides it.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_without_the_extra_nothing_is_imported_and_jobs_still_run() -> None:
    script = textwrap.dedent(
        """
        import sys
        sys.modules["opentelemetry"] = None  # as if the extra were not installed

        import anyio
        from prometheus_client import CollectorRegistry

        import oada_jobs
        from oada_jobs import Service, telemetry
        from oada_jobs.client import OADAClient, _tracing
        from oada_jobs.testing import embedded_server, post_job, wait_for_job

        assert not telemetry.ENABLED and not _tracing.ENABLED
        assert telemetry.step_span("run") is telemetry.step_span("file")

        async def main():
            async with embedded_server() as server:
                service = Service(
                    "no-otel", domain=server.url, token=server.token,
                    metrics_registry=CollectorRegistry(),
                )

                @service.on("echo", timeout=10)
                async def echo(job, ctx):
                    await ctx.oada.get(f"/{ctx.job_id}")
                    return {"ok": True}

                async with service, OADAClient(server.url, server.token) as oada:
                    job_id = await post_job(oada, "no-otel", "echo", {"traceId": "ab" * 16})
                    assert (await wait_for_job(oada, job_id, 20)).status == "success"

        anyio.run(main)
        loaded = [name for name in sys.modules if name.startswith("opentelemetry.")]
        assert not loaded, loaded
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
