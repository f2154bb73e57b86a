"""A peer that stops reading, against the real server: closed with 1013 once
more than ws_send_buffer_bytes wait to be sent to it, after an in-order
prefix of what it was sent, never left with a gap."""

from __future__ import annotations

import json
import logging
import re

import anyio
import httpx
import pytest
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri
from ws_helpers import handshake

from oada_jobs.testing import embedded_server

AUTH = {"authorization": "Bearer god", "content-type": "application/json"}
#: Each change message carries a body this large, to fill the socket buffers.
BLOB = "x" * 256 * 1024
#: Bytes the server may hold for the peer.
BUDGET = 1024 * 1024


async def test_a_peer_that_stops_reading_is_closed_with_1013(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="oada_jobs.server.ws")
    async with (
        embedded_server(ws_send_buffer_bytes=BUDGET) as server,
        httpx.AsyncClient(base_url=server.url, headers=AUTH) as http,
    ):
        assert (await http.put("/resources/slow", json={"n": 0})).status_code == 201
        stream, pending = await handshake(server.port)
        async with stream:
            peer = ClientProtocol(parse_uri(server.ws_url), state=State.OPEN)
            peer.send_text(
                json.dumps(
                    {
                        "requestId": "w",
                        "method": "watch",
                        "path": "/resources/slow",
                        "headers": AUTH,
                    }
                ).encode()
            )
            await stream.send(b"".join(peer.data_to_send()))
            # The peer reads nothing while the resource changes, until the
            # server has given up on it.
            n = 0
            while "bytes waiting to be sent" not in caplog.text:
                n += 1
                assert n < 400, "the server never noticed the peer fell behind"
                response = await http.put("/resources/slow", json={"n": n, "blob": BLOB})
                # Writers are never held up by a slow watcher.
                assert response.status_code == 201
            # Changes after that are not sent (the socket is closing).
            response = await http.put("/resources/slow", json={"n": n + 1})
            assert response.status_code == 201
            received: list[Frame] = []
            peer.receive_data(pending)
            with anyio.fail_after(30):
                while True:
                    received += [e for e in peer.events_received() if isinstance(e, Frame)]
                    if received and received[-1].opcode is Opcode.CLOSE:
                        break
                    peer.receive_data(await stream.receive())
    # Closed for the bytes waiting: over the budget by less than one message.
    match = re.search(r"with (\d+) bytes waiting", caplog.text)
    assert match is not None
    waiting = int(match.group(1))
    assert BUDGET < waiting <= BUDGET + len(BLOB) + 1024
    *texts, close = received
    assert close.opcode is Opcode.CLOSE
    assert int.from_bytes(close.data[:2], "big") == 1013
    messages = [json.loads(frame.data) for frame in texts]
    assert (messages[0]["requestId"], messages[0]["status"]) == ("w", 200)
    # Every change up to the close, in order, none missing, none after.
    assert [message["change"][0]["body"]["n"] for message in messages[1:]] == list(range(1, n + 1))
