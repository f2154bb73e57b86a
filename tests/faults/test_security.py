"""Security: tokens never leak, work code only gets its queue's token, and the
embedded server keeps users apart (401/403, body limits, no path tricks)."""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

import anyio
import httpx
import pytest
import websockets

from oada_jobs import Job, WorkerContext
from oada_jobs._ksuid import ksuid
from oada_jobs.client import OADAClient
from oada_jobs.exceptions import JobError, OADAError
from oada_jobs.testing import embedded_server
from oada_jobs.tree import JOBS_TYPE

from .helpers import (
    LAYOUT,
    ROOT,
    collect,
    make_service,
    post_jobs,
    service_name,
    wait_pending_empty,
)

SERVICE_TOKEN = "svc-SeCrEt-7f3a9c2e1b"
QUEUE_TOKEN = "q-SeCrEt-5d8e2a4c6f"
SECRETS = (SERVICE_TOKEN, QUEUE_TOKEN)
#: Leaked fragments are as bad as whole tokens.
FRAGMENTS = ("SeCrEt", "7f3a9c2e1b", "5d8e2a4c6f")


def assert_clean(text: str, where: str) -> None:
    for fragment in FRAGMENTS:
        assert fragment not in text, f"a token leaked into {where}: ...{fragment}..."


async def run_cli(*args: str, env: dict[str, str]) -> str:
    result = await anyio.run_process(
        [sys.executable, "-m", "oada_jobs", *args],
        env={**os.environ, **env, "COLUMNS": "200", "NO_COLOR": "1"},
        cwd=ROOT,
        check=False,
    )
    return result.stdout.decode(errors="replace") + result.stderr.decode(errors="replace")


@pytest.mark.slow
async def test_tokens_never_leak_end_to_end(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, the libraries' too
    name = service_name()
    errors: list[str] = []

    async def work(job: Job[Any], ctx: WorkerContext) -> Any:
        await ctx.log.info("progress", {"step": 1})
        mode = job.config.get("mode")
        if mode == "fail":
            raise JobError("refused by the test", "refused")
        if mode == "crash":
            raise RuntimeError("boom")
        if mode == "denied":
            # A request the server refuses: its error text goes into the result.
            await ctx.oada.get("/resources/does-not-exist-" + ksuid())
        return {"ok": True, "repr": repr(ctx.oada)}

    async with embedded_server(subprocess=True, tokens=[*SECRETS, "god"]) as server:
        async with OADAClient(server.url, "god") as oada:
            # A second queue on the same store, with its own token.
            await oada.put(
                LAYOUT.queues_path(name),
                {"second": {"domain": server.url, "token": QUEUE_TOKEN}},
                tree=LAYOUT.tree,
            )
            service = make_service(
                name, server, SERVICE_TOKEN, metrics_port=0, metrics_addr="127.0.0.1"
            )
            service.on("noop", 5, work)
            async with service:
                with anyio.fail_after(10):
                    await service.wait_for_queues(
                        lambda queues: "second" in queues and queues["second"].watching
                    )
                keys = []
                for mode in ("ok", "fail", "crash", "denied"):
                    keys += await post_jobs(oada, name, 3, config={"mode": mode})
                await wait_pending_empty(oada, name, timeout=30)
                assert repr(service)
                assert repr(service.queues["second"])
                assert_clean(repr(service) + repr(service.queues), "reprs")
                async with httpx.AsyncClient() as http:
                    base = f"http://127.0.0.1:{service.metrics_bound_port}"
                    metrics = (await http.get(f"{base}/metrics")).text
                    probes = (await http.get(f"{base}/healthz")).text
                    probes += (await http.get(f"{base}/readyz")).text
                assert "oada" in metrics
                assert_clean(metrics, "the metrics output")
                assert '"second": true' in probes, probes
                assert_clean(probes, "the health probes")
            outcome = await collect(oada, name, keys)
            everything = json.dumps(outcome.bodies)
            tree = await oada.get(f"/bookmarks/services/{name}")
            everything += json.dumps(tree.data)

            # Exceptions that involve a token: refused, and a revoked clone.
            for token in SECRETS:
                try:
                    async with OADAClient(server.url, token + "-wrong") as bad:
                        await bad.get("/bookmarks")
                except OADAError as error:
                    errors += [str(error), repr(error)]
            clone = oada.clone(SERVICE_TOKEN)
            clone.revoke()
            try:
                await clone.get("/bookmarks")
            except OADAError as error:
                errors += [str(error), repr(error), repr(clone)]
            try:
                OADAClient(server.url, SERVICE_TOKEN + " with space")
            except ValueError as error:
                errors.append(str(error))

        cli_env = {"OADA_DOMAIN": server.url, "OADA_JOBS_SERVICE": name}
        cli = ""
        for token in (SERVICE_TOKEN, SERVICE_TOKEN + "-wrong"):
            env = {**cli_env, "OADA_TOKEN": token}
            cli += await run_cli("jobs", "list", env=env)
            cli += await run_cli("jobs", "show", keys[0], env=env)
            cli += await run_cli("queues", "list", env=env)

    assert outcome.success >= set(keys[:3])
    assert len(outcome.failure & set(keys)) == 9
    assert_clean(everything, "job data (updates, results) or the service tree")
    assert len(errors) >= 5
    assert_clean("\n".join(errors), "exception messages")
    assert caplog.records, "nothing was logged"
    assert_clean(caplog.text, "the logs")
    for record in caplog.records:
        assert_clean(repr(record.__dict__), f"the attributes of log record {record.name}")
    assert "second" in cli  # the queue is listed, without its token
    assert_clean(cli, "CLI output")


@pytest.mark.slow
async def test_work_code_gets_only_its_queues_token() -> None:
    """Sam's service takes jobs from frank's store too; frank's jobs run with a
    client that is frank (it sees frank's bookmarks) and never sam."""
    name = service_name()
    seen: dict[str, str] = {}

    async def whoami(job: Job[Any], ctx: WorkerContext) -> Any:
        bookmarks = await ctx.oada.get("/bookmarks")
        seen[job.oada_id] = bookmarks.data["_id"]
        return {"bookmarks": bookmarks.data["_id"]}

    async with (
        embedded_server(subprocess=True) as server,
        OADAClient(server.url, "god") as sam,
        OADAClient(server.url, "abc") as frank,
    ):
        await sam.put(
            LAYOUT.queues_path(name),
            {"frank": {"domain": server.url, "token": "abc"}},
            tree=LAYOUT.tree,
        )
        service = make_service(name, server, "god")
        service.on("noop", 5, whoami)
        async with service:
            with anyio.fail_after(10):
                await service.wait_for_queues(
                    lambda queues: "frank" in queues and queues["frank"].watching
                )
            sams = await post_jobs(sam, name, 5)
            franks = await post_jobs(frank, name, 5)
            await wait_pending_empty(sam, name, timeout=30)
            await wait_pending_empty(frank, name, timeout=30)
    sam_bookmarks = "resources/default:resources_bookmarks_321"
    frank_bookmarks = "resources/default:resources_bookmarks_123"
    assert {seen[f"resources/{k}"] for k in sams} == {sam_bookmarks}
    assert {seen[f"resources/{k}"] for k in franks} == {frank_bookmarks}


# ------------------------------------------------------------------ the server


async def raw_http(
    port: int, method: str, path: str, token: str | None, body: bytes = b""
) -> tuple[int, bytes]:
    """Send one request with *path* exactly as given (no client normalisation)."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    if body:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(request)
        data = b""
        try:
            async for chunk in stream:
                data += chunk
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            pass
    head, _, payload = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), payload


async def test_server_requires_a_valid_token() -> None:
    async with embedded_server(subprocess=True) as server:
        for token in (None, "", "wrong", "godd", "Bearer god", "god\tgod"):
            for method in ("GET", "HEAD", "PUT", "DELETE"):
                body = b'{"a": 1}' if method == "PUT" else b""
                status, _ = await raw_http(server.port, method, "/bookmarks/x", token, body)
                assert status == 401, (method, token, status)
        status, _ = await raw_http(server.port, "GET", "/bookmarks", "god")
        assert status == 200
        # The same over the WebSocket, where every message carries its own token.
        async with websockets.connect(server.ws_url) as ws:
            for authorization in ("", "Bearer ", "Bearer wrong", "god", "Basic Z29kOg=="):
                for method in ("get", "put", "delete", "watch"):
                    message: dict[str, Any] = {
                        "requestId": ksuid(),
                        "method": method,
                        "path": "/bookmarks/x",
                        "headers": {
                            "authorization": authorization,
                            "content-type": "application/json",
                        },
                    }
                    if method == "put":
                        message["data"] = {"a": 1}
                    await ws.send(json.dumps(message))
                    with anyio.fail_after(5):
                        reply = json.loads(await ws.recv())
                    assert reply["requestId"] == message["requestId"]
                    assert reply["status"] == 401, (method, authorization, reply)


async def test_server_keeps_users_apart_and_limits_bodies() -> None:
    async with (
        embedded_server(subprocess=True, max_body_bytes=100_000) as server,
        OADAClient(server.url, "god") as sam,
    ):
        secret = ksuid()
        await sam.put(f"/resources/{secret}", {"marker": "sams-secret"}, content_type=JOBS_TYPE)
        await sam.put("/bookmarks/secret", {"_id": f"resources/{secret}"})
        port = server.port
        # Frank may not read or write sam's resources or bookmarks.
        for path in (f"/resources/{secret}", "/resources/default:resources_bookmarks_321"):
            assert (await raw_http(port, "GET", path, "abc"))[0] == 403, path
            assert (await raw_http(port, "PUT", path, "abc", b'{"pwn": 1}'))[0] == 403, path
            assert (await raw_http(port, "DELETE", path, "abc"))[0] == 403, path
        # Body size and nesting limits.
        status, _ = await raw_http(
            port, "PUT", "/bookmarks/big", "god", b'"' + b"x" * 200_000 + b'"'
        )
        assert status == 413
        deep = b'{"a":' * 200 + b"1" + b"}" * 200
        status, payload = await raw_http(port, "PUT", "/bookmarks/deep", "god", deep)
        assert status == 400, payload
        assert b"nest" in payload.lower() or b"deep" in payload.lower(), payload
        assert (await sam.get("/bookmarks")).data.get("deep") is None
        # The same limits over the WebSocket.
        async with websockets.connect(server.ws_url, max_size=None) as ws:
            deep_data: Any = 1
            for _ in range(200):
                deep_data = {"a": deep_data}
            for path, data, statuses in (
                ("/bookmarks/deep", deep_data, {400}),
                ("/bookmarks/big", "x" * 200_000, {413}),
            ):
                message = {
                    "requestId": ksuid(),
                    "method": "put",
                    "path": path,
                    "headers": {"authorization": "Bearer god", "content-type": "application/json"},
                    "data": data,
                }
                await ws.send(json.dumps(message))
                with anyio.fail_after(5):
                    reply = json.loads(await ws.recv())
                assert reply["status"] in statuses, (path, reply.get("status"), reply.get("data"))
        bookmarks = (await sam.get("/bookmarks")).data
        assert bookmarks.get("deep") is None
        assert bookmarks.get("big") is None


TRICKS = [
    "/bookmarks/../resources/{secret}",
    "/bookmarks/./../resources/{secret}",
    "/bookmarks/%2e%2e/resources/{secret}",
    "/bookmarks/%2E%2E/resources/{secret}",
    "/bookmarks/..%2Fresources%2F{secret}",
    "/bookmarks%2F..%2Fresources%2F{secret}",
    "/bookmarks/%2e%2e%2f%2e%2e/resources/{secret}",
    "/bookmarks//../resources/{secret}",
    "//resources/{secret}",
    "/bookmarks/~1resources~1{secret}",
    "/bookmarks/..~1resources~1{secret}",
    "/resources/default:resources_bookmarks_123/../{secret}",
    "/resources/default:resources_bookmarks_123/%2e%2e/{secret}",
    "/resources/{secret}%2F..",
    "/resources/./{secret}",
    "/resources//{secret}",
    "/bookmarks/../../resources/default:resources_bookmarks_321",
    "/bookmarks/%2e%2e/%2e%2e/bookmarks",
    "/bookmarks/..",
    "/bookmarks/%2e%2e",
    "/bookmarks/.",
]


async def test_no_path_trick_reaches_another_users_resource() -> None:
    async with embedded_server(subprocess=True) as server, OADAClient(server.url, "god") as sam:
        secret = ksuid()
        await sam.put(f"/resources/{secret}", {"marker": "sams-secret"}, content_type=JOBS_TYPE)
        await sam.put("/bookmarks/secret", {"_id": f"resources/{secret}"})
        port = server.port
        leaks = []
        for template in TRICKS:
            path = template.format(secret=secret)
            status, payload = await raw_http(port, "GET", path, "abc")
            if status < 300 and (b"sams-secret" in payload or b"bookmarks_321" in payload):
                leaks.append(f"GET {path} -> {status}")
            status, payload = await raw_http(port, "PUT", path, "abc", b'{"pwned": true}')
            # Over the WebSocket the path reaches the server exactly as written.
            async with websockets.connect(f"ws://127.0.0.1:{port}/") as ws:
                for method, data in (("get", None), ("put", {"pwned": True})):
                    message: dict[str, Any] = {
                        "requestId": ksuid(),
                        "method": method,
                        "path": path,
                        "headers": {
                            "authorization": "Bearer abc",
                            "content-type": "application/json",
                        },
                    }
                    if data is not None:
                        message["data"] = data
                    await ws.send(json.dumps(message))
                    with anyio.fail_after(5):
                        reply = json.loads(await ws.recv())
                    text = json.dumps(reply.get("data"))
                    if reply["status"] < 300 and method == "get" and "sams-secret" in text:
                        leaks.append(f"WS GET {path} -> {reply['status']}")
        # Nothing frank wrote landed in sam's resources.
        assert "pwned" not in (await sam.get(f"/resources/{secret}")).data
        assert "pwned" not in (await sam.get("/bookmarks")).data
        assert not leaks, leaks
