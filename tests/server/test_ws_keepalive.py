"""Server-side WebSocket keepalive: pings every ws_ping_interval, silent peers dropped."""

from __future__ import annotations

import anyio
from ws_helpers import handshake, ws_connect

from oada_jobs.testing import embedded_server


async def test_server_pings_and_drops_silent_peers() -> None:
    async with embedded_server(ws_ping_interval=0.2) as server:
        stream, pending = await handshake(server.port)
        async with stream:
            # Pings come every 0.2 s; a silent peer is dropped after the
            # minimum pong wait (5 s).
            with anyio.fail_after(15):
                while len(pending) < 2:
                    pending += await stream.receive()
                # FIN + opcode 0x9: a ping frame from the server.
                assert pending[0] == 0x89, pending
                # Never answered: the server closes the connection.
                try:
                    while True:
                        await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                    pass


async def test_answering_peers_stay_connected() -> None:
    async with embedded_server(ws_ping_interval=0.05) as server, ws_connect(server) as ws:
        # websockets answers pings itself; across many intervals the session
        # stays up and serves requests.
        for _ in range(10):
            assert (await ws.request("head", "/bookmarks"))["status"] == 200
            with anyio.move_on_after(0.05):
                await ws.conn.wait_closed()
        assert (await ws.request("head", "/bookmarks"))["status"] == 200
