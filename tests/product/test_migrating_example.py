"""The ported service in docs/migrating.md runs as the page says."""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest

from oada_jobs import Service
from oada_jobs.client import OADAClient
from oada_jobs.testing import EmbeddedServer, post_job, wait_for_job

DOC = Path(__file__).resolve().parents[2] / "docs" / "migrating.md"


def ported_service(sent: list[tuple[list[str], str]]) -> Service:
    """Execute the page's Python example, with a ``send_mail`` that records."""
    # The last Python block is the complete ported service.
    code = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL)[-1]

    async def send_mail(to: list[str], subject: str) -> str:
        sent.append((to, subject))
        return f"<{len(sent)}@example.org>"

    namespace: dict[str, Any] = {"send_mail": send_mail}
    exec(compile(code, str(DOC), "exec"), namespace)
    service = namespace["service"]
    assert isinstance(service, Service)
    return service


async def test_the_ported_example_runs(
    server: EmbeddedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOMAIN", server.url)
    monkeypatch.setenv("TOKEN", server.token)
    sent: list[tuple[list[str], str]] = []
    service = ported_service(sent)
    assert service.layout.name == "pending"
    assert service.config.concurrency == 5
    async with anyio.create_task_group() as group:
        await group.start(partial(service.run, handle_signals=False))
        async with OADAClient(server.url, server.token) as oada:
            good = await post_job(
                oada,
                "email-service",
                "email",
                {"to": ["ada@example.org"], "subject": "Hi"},
                layout="pending",
            )
            none = await post_job(
                oada, "email-service", "email", {"to": [], "subject": "Hi"}, layout="pending"
            )
            done = await wait_for_job(oada, good, 20)
            failed = await wait_for_job(oada, none, 20)
        await service.stop()
    assert done.status == "success"
    assert done.result == {"id": "<1@example.org>"}
    assert [u["status"] for u in done.updates.values()].count("sending") == 1
    assert failed.status == "failure"
    assert failed.result["failType"] == "no-recipients"
    assert sent == [(["ada@example.org"], "Hi")]
