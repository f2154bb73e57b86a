"""/healthz, /readyz and the queue gauges tell the truth about a running service."""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from prometheus_client import CollectorRegistry

from oada_jobs import Service
from oada_jobs.health import Readiness, serve_probes
from oada_jobs.metrics import ServiceMetrics
from oada_jobs.testing import embedded_server


def _get(port: int, path: str) -> tuple[int, dict[str, Any]]:
    """GET from a thread (works while the test's event loop is blocked)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


async def _wait_for(http: httpx.AsyncClient, url: str, status: int, timeout: float) -> Any:
    with anyio.fail_after(timeout):
        while True:
            answer = await http.get(url)
            if answer.status_code == status:
                assert answer.content.endswith(b"}"), answer.content
                return answer.json()
            await anyio.sleep(0.1)


async def test_probes_answer_beside_the_metrics(make_service: Callable[..., Service]) -> None:
    registry = CollectorRegistry()
    service = make_service(metrics_registry=registry, metrics_port=0, metrics_addr="127.0.0.1")
    async with service, httpx.AsyncClient() as http:
        base = f"http://127.0.0.1:{service.metrics_bound_port}"
        health = await http.get(f"{base}/healthz")
        assert health.status_code == 200
        assert health.json()["status"] == "ok"
        ready = await _wait_for(http, f"{base}/readyz", 200, 10)
        assert ready["status"] == "ready"
        assert ready["queues"] == {"_default": True}
        assert (await http.get(f"{base}/metrics")).status_code == 200
        labels = {"service": service.name, "queue": "_default"}
        assert registry.get_sample_value("oada_jobs_queue_up", labels) == 1
    # Stopped: nothing listens any more.
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient() as http:
            await http.get(f"{base}/healthz")


async def test_healthz_fails_while_the_event_loop_is_blocked(
    make_service: Callable[..., Service],
) -> None:
    service = make_service(metrics_port=0, metrics_addr="127.0.0.1")
    async with service:
        port = service.metrics_bound_port
        assert port is not None
        assert _get(port, "/healthz")[0] == 200
        seen: list[tuple[float, int, dict[str, Any]]] = []
        started = time.monotonic()
        done = threading.Event()

        def probe() -> None:
            while not done.is_set():
                status, body = _get(port, "/healthz")
                seen.append((time.monotonic() - started, status, body))
                if status == 503:
                    seen.append((time.monotonic() - started, *_get(port, "/readyz")))
                    return
                time.sleep(0.2)

        prober = threading.Thread(target=probe)
        prober.start()
        # A work function (or library) that blocks the loop for 6 s.
        time.sleep(6)
        done.set()
        prober.join()
        failures = [(at, body) for at, status, body in seen if status == 503]
        assert failures, seen
        # It failed while the loop was blocked, once the heartbeat was older than the limit.
        assert failures[0][0] < 6
        assert failures[0][1]["heartbeat_age_seconds"] > service.config.loop_stall_limit
        assert failures[0][1]["status"] == "event loop stalled"
        assert failures[-1][1]["status"] == "event loop stalled"  # /readyz too
        # The loop runs again: healthy at the next heartbeat.
        async with httpx.AsyncClient() as http:
            await _wait_for(http, f"http://127.0.0.1:{port}/healthz", 200, 5)


@pytest.mark.slow
async def test_readyz_follows_the_oada_server_going_and_coming_back(
    make_service: Callable[..., Service], tmp_path: Path
) -> None:
    registry = CollectorRegistry()
    async with embedded_server(subprocess=True, db=tmp_path / "oada.sqlite") as server:
        service = make_service(
            domain=server.url,
            token=server.token,
            metrics_registry=registry,
            metrics_port=0,
            metrics_addr="127.0.0.1",
        )
        async with service, httpx.AsyncClient() as http:
            base = f"http://127.0.0.1:{service.metrics_bound_port}"
            labels = {"service": service.name, "queue": "_default"}
            await _wait_for(http, f"{base}/readyz", 200, 10)
            await server.kill()
            # Unready within seconds, not after the watch's 120 s deadline.
            body = await _wait_for(http, f"{base}/readyz", 503, 10)
            assert body["status"] == "queue(s) not connected"
            assert body["queues"] == {"_default": False}
            assert registry.get_sample_value("oada_jobs_queue_up", labels) == 0
            # The process itself is fine.
            assert (await http.get(f"{base}/healthz")).status_code == 200
            await server.restart()
            body = await _wait_for(http, f"{base}/readyz", 200, 30)
            assert body["queues"] == {"_default": True}
            assert registry.get_sample_value("oada_jobs_queue_up", labels) == 1


def _image_healthcheck() -> list[str]:
    """The Dockerfile's HEALTHCHECK command, as a list."""
    text = (Path(__file__).resolve().parents[2] / "Dockerfile").read_text()
    match = re.search(r"^\s+CMD (\[.*\])$", text, re.MULTILINE)
    assert match is not None, "the Dockerfile has no exec-form HEALTHCHECK CMD"
    command: list[str] = json.loads(match.group(1))
    return command


async def test_the_image_healthcheck_follows_readiness() -> None:
    command = _image_healthcheck()
    assert "/readyz" in command[-1]
    state = {"ready": True}

    def readiness() -> Readiness:
        return Readiness(running=True, queues={"_default": state["ready"]})

    metrics = ServiceMetrics("svc", registry=CollectorRegistry())
    async with serve_probes(metrics, readiness, port=0, addr="127.0.0.1", stall_limit=5) as probes:
        env = {**os.environ, "OADA_JOBS_METRICS_PORT": str(probes.port)}
        args = [sys.executable, *command[1:]]
        assert (await anyio.run_process(args, env=env, check=False)).returncode == 0
        state["ready"] = False
        probes.beat()
        assert (await anyio.run_process(args, env=env, check=False)).returncode != 0
