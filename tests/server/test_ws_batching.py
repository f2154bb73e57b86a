"""The server's WebSocket protocol: the frames of an event-loop pass leave
in one transport write at its end, in order, and a close frame goes out
after them."""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.server import ServerState
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from oada_jobs.server.runner import BatchedWebSocketProtocol


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


def open_protocol() -> tuple[BatchedWebSocketProtocol, RecordingTransport]:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("not called")

    config = uvicorn.Config(app, ws=BatchedWebSocketProtocol)
    protocol = BatchedWebSocketProtocol(config, ServerState(), {}, asyncio.get_running_loop())
    transport = RecordingTransport()
    protocol.connection_made(transport)
    # As after the opening handshake.
    protocol.conn = ServerProtocol(state=State.OPEN)
    protocol.handshake_complete = True
    return protocol, transport


def frames(data: bytes) -> list[Frame]:
    reader = ClientProtocol(parse_uri("ws://127.0.0.1/"), state=State.OPEN)
    reader.receive_data(data)
    return [event for event in reader.events_received() if isinstance(event, Frame)]


async def test_the_frames_of_a_pass_leave_together_at_its_end() -> None:
    protocol, transport = open_protocol()
    for text in ("one", "two", "three"):
        await protocol.send({"type": "websocket.send", "text": text})
    assert transport.writes == []
    await asyncio.sleep(0)  # the end of the pass
    assert [[frame.data for frame in frames(data)] for data in transport.writes] == [
        [b"one", b"two", b"three"]
    ]
    await asyncio.sleep(0)
    assert len(transport.writes) == 1  # nothing left over to write
    await protocol.send({"type": "websocket.send", "text": "next pass"})
    await asyncio.sleep(0)
    assert [[frame.data for frame in frames(data)] for data in transport.writes][1:] == [
        [b"next pass"]
    ]


async def test_a_close_goes_out_after_the_frames_sent_before_it() -> None:
    protocol, transport = open_protocol()
    await protocol.send({"type": "websocket.send", "text": "last words"})
    await protocol.send({"type": "websocket.close", "code": 1000})
    await asyncio.sleep(0)
    sent = frames(b"".join(transport.writes))
    assert [frame.opcode for frame in sent] == [Opcode.TEXT, Opcode.CLOSE]
    assert sent[0].data == b"last words"
