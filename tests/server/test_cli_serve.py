"""``oada-jobs serve``: starts, answers, prints the URL and never a secret token."""

from __future__ import annotations

import json
import os
import platform
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx
import pytest
from anyio.abc import Process
from typer.testing import CliRunner

from oada_jobs.cli import app

URL = re.compile(r"listening on (https?://[\d.]+:\d+)/")


@asynccontextmanager
async def serve(
    *args: str, env: dict[str, str] | None = None
) -> AsyncIterator[tuple[Process, str, str]]:
    """Run the command; yield the process, its URL and everything it printed up to then."""
    cmd = [sys.executable, "-m", "oada_jobs", "serve", "--host", "127.0.0.1", "--port", "0", *args]
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    process = await anyio.open_process(cmd, env=full_env, stderr=subprocess.STDOUT)
    async with process:
        assert process.stdout is not None
        out = ""
        with anyio.fail_after(30):
            async for chunk in process.stdout:
                out += chunk.decode()
                # Wait for the full banner (URL plus the token line).
                if URL.search(out) and "tokens:" in out:
                    break
        match = URL.search(out)
        assert match, out
        try:
            yield process, match.group(1), out
        finally:
            if process.returncode is None:
                process.terminate()
            with anyio.fail_after(10):
                await process.wait()


async def test_serve_answers_and_stops_gracefully(tmp_path: Path) -> None:
    db = tmp_path / "oada.sqlite"
    options = ("--document-cache-size", "0", "--document-cache-bytes", "0")
    async with serve("--db", str(db), *options, "--change-cache-bytes", "0") as (
        process,
        url,
        out,
    ):
        assert "god" in out  # the documented development token may be shown
        async with httpx.AsyncClient() as c:
            r = await c.put(
                f"{url}/bookmarks/cli", json={"ok": 1}, headers={"authorization": "Bearer god"}
            )
            assert r.status_code == 201
            r = await c.get(f"{url}/bookmarks/cli/ok", headers={"authorization": "Bearer god"})
            assert r.json() == 1
            denied = await c.get(f"{url}/bookmarks", headers={"authorization": "Bearer nope"})
            assert denied.status_code == 401
    # SIGTERM stops it cleanly, and a clean stop exits 0.
    assert process.returncode == 0
    assert db.exists()


async def test_input_limits_are_options(tmp_path: Path) -> None:
    args = ("--db", ":memory:", "--max-depth", "3", "--max-path-bytes", "300")
    async with serve(*args, "--replay-slice", "0.001") as (_process, url, _out):
        auth = {"authorization": "Bearer god"}
        async with httpx.AsyncClient(base_url=url, headers=auth) as c:
            assert (await c.put("/bookmarks/d", json={"a": {"b": 1}})).status_code == 201
            deep = await c.put("/bookmarks/d", json={"a": {"b": {"c": 1}}})
            assert deep.status_code == 400
            assert "nested more than 3" in deep.json()["message"]
            long = await c.get("/bookmarks/" + "k" * 300)
            assert long.status_code == 414


async def test_sigint_stops_it_cleanly_too(tmp_path: Path) -> None:
    async with serve("--db", str(tmp_path / "oada.sqlite")) as (process, _url, _out):
        process.send_signal(signal.SIGINT)
        with anyio.fail_after(10):
            await process.wait()
    assert process.returncode == 0


async def test_a_second_server_on_the_same_database_refuses_to_start(tmp_path: Path) -> None:
    db = tmp_path / "shared.sqlite"
    second = [sys.executable, "-m", "oada_jobs", "serve", "--port", "0", "--db", str(db)]
    async with serve("--db", str(db)) as (first, url, _out):
        with anyio.fail_after(30):
            result = await anyio.run_process(second, check=False)
        assert result.returncode == 1
        lines = result.stderr.decode().splitlines()
        assert len(lines) == 1, lines
        assert str(db) in lines[0]
        assert f"process {first.pid}" in lines[0]
        # The first one never noticed.
        async with httpx.AsyncClient() as c:
            r = await c.get(f"{url}/bookmarks", headers={"authorization": "Bearer god"})
            assert r.status_code == 200
        # A crash releases the database at once.
        first.kill()
        with anyio.fail_after(10):
            await first.wait()
        async with serve("--db", str(db)) as (_third, url, _out), httpx.AsyncClient() as c:
            r = await c.get(f"{url}/bookmarks", headers={"authorization": "Bearer god"})
            assert r.status_code == 200


async def test_custom_tokens_are_never_printed(tmp_path: Path) -> None:
    secret = "s3cret-token-value"
    env = {"OADA_JOBS_SERVE_TOKENS": "from-env-token"}
    async with serve("--db", ":memory:", "--token", secret, "--quirks", "reference", env=env) as (
        _process,
        url,
        out,
    ):
        assert secret not in out
        assert "from-env-token" not in out
        assert "not shown" in out
        async with httpx.AsyncClient() as c:
            ok = await c.get(f"{url}/bookmarks", headers={"authorization": f"Bearer {secret}"})
            assert ok.status_code == 200
            # Only the given tokens are accepted: the defaults are off.
            god = await c.get(f"{url}/bookmarks", headers={"authorization": "Bearer god"})
            assert god.status_code == 401
            # quirks=reference: a missing /resources/<id> is 403.
            missing = await c.get(
                f"{url}/resources/none", headers={"authorization": f"Bearer {secret}"}
            )
            assert missing.status_code == 403


async def test_tls_self_signed(tmp_path: Path) -> None:
    async with serve("--db", ":memory:", "--tls-self-signed", "--tls-dir", str(tmp_path)) as (
        _process,
        url,
        out,
    ):
        assert url.startswith("https://")
        assert str(tmp_path / "ca.pem") in out
        import ssl

        ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
        async with httpx.AsyncClient(verify=ctx) as c:
            r = await c.head(f"{url}/bookmarks", headers={"authorization": "Bearer god"})
            assert r.status_code == 200


def test_bad_options_are_refused(tmp_path: Path) -> None:
    runner = CliRunner()
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    cases = [
        ["serve", "--quirks", "weird"],
        ["serve", "--port", "70000"],
        ["serve", "--tls-cert", str(cert)],
        ["serve", "--max-body-bytes", "0"],
        ["serve", "--document-cache-size", "-1"],
        ["serve", "--document-cache-bytes", "-1"],
        ["serve", "--change-cache-bytes", "-1"],
        ["serve", "--ws-send-buffer-bytes", "0"],
        ["serve", "--ws-send-buffer-total-bytes", "0"],
        ["serve", "--max-depth", "1"],
        ["serve", "--max-depth", "513"],
        ["serve", "--max-path-bytes", "10"],
        ["serve", "--replay-slice", "0"],
        ["serve", "--tls-cert", str(tmp_path / "missing.pem"), "--tls-key", str(cert)],
    ]
    for args in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)


async def test_port_in_use_is_a_clear_error() -> None:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    async with listener:
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        result = await anyio.run_process(
            [sys.executable, "-m", "oada_jobs", "serve", "--port", str(port), "--db", ":memory:"],
            check=False,
        )
    assert result.returncode == 1
    lines = result.stderr.decode().splitlines()
    assert lines == [f"error: cannot listen on 127.0.0.1:{port}: address already in use"]


async def test_tokens_file_configures_several_users(tmp_path: Path) -> None:
    tokens = {
        "alice-secret": {"user": "users/alice", "bookmarks": "resources/alice_bm"},
        "bob-secret": {
            "user": "users/bob",
            "bookmarks": "resources/bob_bm",
            "scopes": ["oada.yield:read"],
        },
    }
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps(tokens))
    async with serve("--db", ":memory:", "--tokens-file", str(path)) as (_process, url, out):
        assert "secret" not in out
        assert "users/alice" in out
        async with httpx.AsyncClient() as c:
            r = await c.get(f"{url}/bookmarks", headers={"authorization": "Bearer alice-secret"})
            assert r.headers["content-location"] == "/resources/alice_bm"
            god = await c.get(f"{url}/bookmarks", headers={"authorization": "Bearer god"})
            assert god.status_code == 401


def test_bad_tokens_file_never_quotes_a_token(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"hidden-token-value": {"user": "nobody"}}))
    result = CliRunner().invoke(app, ["serve", "--tokens-file", str(path)])
    assert result.exit_code == 2
    assert "entry 1" in result.output
    assert "hidden-token-value" not in result.output
    path.write_text("[1, 2]")
    result = CliRunner().invoke(app, ["serve", "--tokens-file", str(path)])
    assert result.exit_code == 2
    assert "non-empty JSON object" in result.output


_BURST = """
import sys, psutil
from oada_jobs.cli.serve import _return_large_buffers_to_the_os
if sys.argv[1] == "fixed":
    _return_large_buffers_to_the_os()
process = psutil.Process()
base = process.memory_info().rss
keep = []
for _ in range(3):
    blocks = []
    for _ in range(100):
        blocks.append(bytes(2**20))
        # Small and long-lived, as a server's are; larger than the holes
        # start-up left in the heap, so each lands after the block before.
        keep.append(bytearray(32 * 1024))
    del blocks
print((process.memory_info().rss - base - sum(map(len, keep))) // 2**20)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="a glibc allocator setting")
def test_the_server_process_gives_freed_large_buffers_back_to_the_os() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_"))}
    kept = {
        mode: int(
            subprocess.run(
                [sys.executable, "-c", _BURST, mode],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        )
        for mode in ("default", "fixed")
    }
    # 300 one-MiB buffers were freed: glibc alone keeps most of them.
    assert kept["fixed"] < 4, kept
    assert kept["default"] > kept["fixed"] + 32, kept
