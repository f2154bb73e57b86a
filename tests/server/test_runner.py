"""serve() and the oada_jobs.server package surface."""

from __future__ import annotations

import os
import socket
from functools import partial
from pathlib import Path

import anyio
import httpx
import pytest
import websockets

import oada_jobs.server as server_pkg
from oada_jobs.exceptions import DatabaseLocked, ListenError
from oada_jobs.server import OADACore, ServerConfig, ServerHandle, serve
from oada_jobs.server.runner import _listen


async def test_serve_reports_ready_and_stops_on_shutdown() -> None:
    async with anyio.create_task_group() as tg:
        handle = await tg.start(partial(serve, ServerConfig(), port=0))
        assert isinstance(handle, ServerHandle)
        assert handle.port > 0
        assert handle.url == f"http://127.0.0.1:{handle.port}"
        assert handle.ws_url == f"ws://127.0.0.1:{handle.port}/"
        assert isinstance(handle.core, OADACore)
        async with httpx.AsyncClient() as c:
            r = await c.head(f"{handle.url}/bookmarks", headers={"authorization": "Bearer god"})
            assert r.status_code == 200
        handle.shutdown()
    # The task group only ends once serve() returned; the core is closed.
    assert handle.core is None


async def test_busy_port_is_an_os_error() -> None:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    async with listener:
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        with pytest.raises(ListenError, match=f"127.0.0.1:{port}: address already in use"):
            await serve(ServerConfig(), port=port)


async def test_a_database_in_use_is_refused(tmp_path: Path) -> None:
    db = str(tmp_path / "one.sqlite")
    async with OADACore(ServerConfig(db=db)):
        with pytest.raises(DatabaseLocked, match=f"process {os.getpid()}"):
            await serve(ServerConfig(db=db), port=0)
        with pytest.raises(DatabaseLocked):
            async with OADACore(ServerConfig(db=db)):
                pass
    # Released on close.
    async with OADACore(ServerConfig(db=db)):
        pass


async def test_certificate_without_key_is_refused() -> None:
    with pytest.raises(ValueError, match="both a certificate file and a key file"):
        await serve(ServerConfig(), port=0, ssl_certfile="cert.pem")


def test_package_exports_resolve_lazily() -> None:
    for name in server_pkg.__all__:
        assert getattr(server_pkg, name) is not None
    assert set(server_pkg.__all__) <= set(dir(server_pkg))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = server_pkg.nope  # type: ignore[attr-defined]


async def test_connections_past_max_connections_are_answered_503() -> None:
    """Each connection may hold a body or a frame being read: their number is capped."""
    async with anyio.create_task_group() as tg:
        handle = await tg.start(partial(serve, ServerConfig(max_connections=2), port=0))
        auth = {"authorization": "Bearer god"}
        async with (
            websockets.connect(handle.ws_url) as first,
            websockets.connect(handle.ws_url) as second,
        ):
            async with httpx.AsyncClient() as c:
                r = await c.get(f"{handle.url}/bookmarks", headers=auth)
                assert r.status_code == 503
            await first.close()
            await second.close()
        # With the sockets gone, requests are served again.
        async with httpx.AsyncClient() as c:
            for _ in range(50):
                r = await c.get(f"{handle.url}/bookmarks", headers=auth)
                if r.status_code == 200:
                    break
                await anyio.sleep(0.05)
            assert r.status_code == 200
        handle.shutdown()


def test_the_listening_socket_names_tcp_so_connections_get_nodelay() -> None:
    # asyncio sets TCP_NODELAY on accepted sockets only when the listener's
    # proto is IPPROTO_TCP; without it small answers wait for Nagle.
    with _listen("127.0.0.1", 0) as sock:
        assert sock.proto == socket.IPPROTO_TCP
