"""The embedded OADA server as the benchmarks run it: TLS, SQLite file, counting.

``python -m bench.counted_server <config.json>`` serves
:func:`oada_jobs.server.app.create_app` with uvicorn over HTTPS/WSS on a free
loopback port, with the settings ``oada-jobs serve`` uses
(:func:`oada_jobs.server.runner.uvicorn_config`) except that, like the
reference OADA server, it never accepts WebSocket compression, and with a
development certificate from :func:`oada_jobs.server.tls.self_signed`, and
prints
``{"event": "ready", "port": ..., "ca": ...}`` on stdout.

The config file (mode 0600, written by :func:`bench.common.bench_server`)
holds ``{"tokens": {label: token}, "db": path, "dir": tmpdir}``. Every token
is the development user's. :class:`CountingApp` counts, per token label, HTTP
requests and WebSocket request messages (everything but watch notifications,
which the server sends); ``GET /_bench/counts`` with the ``admin`` token
returns the counts. Counting costs a dictionary lookup per request and a
substring search per WebSocket message, the same for every client measured.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import anyio
import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from oada_jobs.server.app import create_app
from oada_jobs.server.config import ServerConfig, TokenInfo
from oada_jobs.server.runner import uvicorn_config
from oada_jobs.server.tls import self_signed

from .common import BOOKMARKS, USER
from .lag import probe_from_env
from .loop import run

_BEARER = re.compile(rb'"authorization"\s*:\s*"Bearer ([^"]+)"', re.IGNORECASE)


class CountingApp:
    """ASGI middleware counting requests per token label."""

    def __init__(self, app: ASGIApp, labels: dict[str, str]) -> None:
        self.app = app
        self._labels = labels  # token -> label
        self._admin = next(token for token, label in labels.items() if label == "admin")
        self.counts: defaultdict[str, dict[str, int]] = defaultdict(lambda: {"http": 0, "ws": 0})

    def _label(self, token: bytes | str | None) -> str:
        if isinstance(token, bytes):
            token = token.decode("latin-1")
        return self._labels.get(token or "", "other")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            auth = dict(scope["headers"]).get(b"authorization", b"")
            token = auth[7:] if auth[:7].lower() == b"bearer " else b""
            if scope["path"] == "/_bench/counts" and token.decode("latin-1") == self._admin:
                await self._send_counts(send)
                return
            self.counts[self._label(token)]["http"] += 1
        elif scope["type"] == "websocket":
            receive = self._counting(receive)
        await self.app(scope, receive, send)

    def _counting(self, receive: Receive) -> Receive:
        async def counted() -> Message:
            message = await receive()
            if message["type"] == "websocket.receive":
                data = message.get("bytes") or (message.get("text") or "").encode()
                found = _BEARER.search(data)
                self.counts[self._label(found.group(1) if found else None)]["ws"] += 1
            return message

        return counted

    async def _send_counts(self, send: Send) -> None:
        body = json.dumps(self.counts).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})


async def main(config_path: str) -> None:
    """Serve until SIGTERM; print the ready line once the port is bound."""
    settings: dict[str, Any] = json.loads(Path(config_path).read_text())
    tokens: dict[str, str] = settings["tokens"]
    info = TokenInfo(user=USER, bookmarks=BOOKMARKS, scopes=("all:all",))
    config = ServerConfig(db=settings["db"], tokens=dict.fromkeys(tokens.values(), info))
    cert = self_signed(Path(settings["dir"]) / "tls")
    app = CountingApp(create_app(config), {token: label for label, token in tokens.items()})
    # The settings `oada-jobs serve` runs with, on a free port, but without
    # WebSocket compression, as on the reference OADA server: @oada/client
    # 1.1.4 offers it, and inflating and deflating every message cost the
    # original's service about half its CPU per job.
    uv_config = uvicorn_config(
        app,
        config,
        host="127.0.0.1",
        port=0,
        ssl_certfile=cert.cert,
        ssl_keyfile=cert.key,
        per_message_deflate=False,
    )
    # uvicorn installs its own SIGTERM/SIGINT handlers for a graceful stop.
    # The stall probe (bench/lag.py) runs beside it when BENCH_LAG_FILE is set.
    async with anyio.create_task_group() as group:
        group.start_soon(probe_from_env)
        await _AnnouncingServer(uv_config, ca=str(cert.ca_cert)).serve()
        group.cancel_scope.cancel()
    print(json.dumps({"event": "exit"}), flush=True)


class _AnnouncingServer(uvicorn.Server):
    """uvicorn's server, printing the ready line once its port is bound."""

    def __init__(self, config: uvicorn.Config, *, ca: str) -> None:
        super().__init__(config)
        self._ca = ca

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            port = self.servers[0].sockets[0].getsockname()[1]
            print(json.dumps({"event": "ready", "port": port, "ca": self._ca}), flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m bench.counted_server <config.json>")
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    run(main, sys.argv[1])
