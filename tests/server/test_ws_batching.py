"""The server's WebSocket protocol: the frames of an event-loop pass leave
in one transport write at its end, in order, and a close frame goes out
after them; reading pauses only while the application is far behind."""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import uvicorn
from uvicorn.server import ServerState
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from oada_jobs.server.runner import READ_AHEAD, READ_AHEAD_BYTES, BatchedWebSocketProtocol


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False
        self.reading = True
        #: What the transport pretends to hold for a peer that is not reading.
        self.buffered = 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = self.aborted = True

    def pause_reading(self) -> None:
        assert self.reading
        self.reading = False

    def resume_reading(self) -> None:
        assert not self.reading
        self.reading = True


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


def text_frame(text: str) -> bytes:
    writer = ClientProtocol(parse_uri("ws://127.0.0.1/"), state=State.OPEN)
    writer.send_text(text.encode())
    return b"".join(writer.data_to_send())


async def test_direct_sends_join_the_pass_and_count_the_bytes_waiting() -> None:
    protocol, transport = open_protocol()
    await protocol.send({"type": "websocket.send", "text": "awaited"})
    assert protocol.send_text_nowait("direct") == len("awaited") + len("direct")
    await asyncio.sleep(0)
    assert [[frame.data for frame in frames(data)] for data in transport.writes] == [
        [b"awaited", b"direct"]
    ]
    assert protocol.buffered_bytes() == 0
    transport.buffered = 1000  # the peer stopped taking what was written
    # This pass's frames (UTF-8 bytes) and the transport's buffer.
    assert [protocol.send_text_nowait(text) for text in ("a", "b", "é")] == [1001, 1002, 1004]
    assert protocol.buffered_bytes() == 1004
    await asyncio.sleep(0)
    assert protocol.buffered_bytes() == 1000
    transport.buffered = 0
    assert protocol.send_text_nowait("d") == 1
    await asyncio.sleep(0)
    assert [frame.data for frame in frames(b"".join(transport.writes[1:]))] == [
        b"a",
        b"b",
        "é".encode(),
        b"d",
    ]
    transport.closed = True
    assert protocol.send_text_nowait("dropped") == 0


async def test_a_keepalive_timeout_drops_what_waits_for_the_peer() -> None:
    protocol, transport = open_protocol()
    transport.buffered = 1000
    protocol.keepalive_timeout()
    # Closing would wait for the buffer to drain, which a peer that does not
    # read never lets happen.
    assert transport.aborted


async def test_close_nowait_closes_after_the_frames_and_cuts_off_a_silent_peer() -> None:
    protocol, transport = open_protocol()
    protocol.close_timeout = 0.01
    protocol.send_text_nowait("last words")
    protocol.close_nowait(1013, "too slow")
    sent = frames(b"".join(transport.writes))
    assert [frame.opcode for frame in sent] == [Opcode.TEXT, Opcode.CLOSE]
    assert sent[0].data == b"last words"
    assert protocol.queue.get_nowait() == {
        "type": "websocket.disconnect",
        "code": 1013,
        "reason": "too slow",
    }
    assert protocol.send_text_nowait("after the close") == 0
    protocol.close_nowait(1000)  # a second close does nothing
    assert len(frames(b"".join(transport.writes))) == 2
    with anyio.fail_after(5):
        while not transport.aborted:  # the peer never answers the close
            await asyncio.sleep(0.01)


async def test_an_application_close_cuts_off_a_silent_peer_too() -> None:
    protocol, transport = open_protocol()
    protocol.close_timeout = 0.01
    transport.buffered = 1000
    await protocol.send({"type": "websocket.close", "code": 1000})
    with anyio.fail_after(5):
        while not transport.aborted:  # not merely closed: that waits for a drain
            await asyncio.sleep(0.01)


async def test_reading_pauses_only_while_the_application_is_far_behind() -> None:
    protocol, transport = open_protocol()
    for n in range(READ_AHEAD):
        protocol.data_received(text_frame(f"m{n}"))
    assert transport.reading
    protocol.data_received(text_frame("one too many"))
    assert not transport.reading
    received = [await protocol.receive() for _ in range(READ_AHEAD)]
    assert not transport.reading  # one still waits
    received.append(await protocol.receive())
    assert transport.reading
    assert [message["text"] for message in received] == [
        *(f"m{n}" for n in range(READ_AHEAD)),
        "one too many",
    ]


async def test_reading_pauses_once_the_application_is_a_budget_of_bytes_behind() -> None:
    """A peer pipelining large frames is held to READ_AHEAD_BYTES, not READ_AHEAD frames."""
    protocol, transport = open_protocol()
    big = "x" * (READ_AHEAD_BYTES // 3 + 1)
    for n in range(3):
        assert transport.reading, f"paused after {n} large frames"
        protocol.data_received(text_frame(big))
    assert not transport.reading  # over the budget after 3 of them, not 16
    await protocol.receive()
    assert not transport.reading  # the others still wait
    await protocol.receive()
    await protocol.receive()
    assert transport.reading
    assert protocol.queue.empty()
    # The count starts again from nothing: a small frame does not pause.
    protocol.data_received(text_frame("small"))
    assert transport.reading
