"""uvicorn's protocols for the embedded server, with bounded reading and batched sending.

:class:`BatchedWebSocketProtocol` writes the frames of one event-loop pass
together and reads ahead only a bounded number of messages and bytes;
:class:`BoundedHttpProtocol` bounds the size of a request head and the time
to read a request. :func:`oada_jobs.server.runner.uvicorn_config` installs
both.

Owns the protocols' reading and writing; must not import the framework or
the client, nor handle a request itself.
"""

from __future__ import annotations

import asyncio
from collections import deque
from http import HTTPStatus
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import InvalidState

from oada_jobs.server.config import ServerConfig
from oada_jobs.server.ws import DIRECT_SEND

__all__ = [
    "READ_AHEAD",
    "READ_AHEAD_BYTES",
    "BatchedWebSocketProtocol",
    "BoundedHttpProtocol",
    "http_protocol",
]

#: Messages the application may fall behind on a socket before it stops being read.
READ_AHEAD = 16

#: Bytes of received messages the application may fall behind on a socket
#: before it stops being read. With :data:`READ_AHEAD`, a socket holds at
#: most this much read ahead plus the one message being assembled (which the
#: frame limit, ``ws_max_size``, bounds).
READ_AHEAD_BYTES = 1024 * 1024


class BatchedWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol, with less work per message.

    *Sending.* Text frames sent in one event-loop pass leave together in one
    transport write. A busy socket carries many small answers and change
    notifications at once; written one by one, each costs a TLS record and a
    system call. Frames wait in the websockets protocol's buffer until the
    end of the pass, a few callbacks later. (Sending the first frame of a
    pass at once and the rest at its end cost the server 5-18 % more CPU per
    job in the benchmarks: two writes a pass where one will do.) Every other
    write of this protocol (pongs, close frames, the handshake) drains that
    same buffer first, so the order on the wire is the order of sending.

    The OADA session (:mod:`oada_jobs.server.ws`) sends without a task of its
    own through :meth:`send_text_nowait` and closes through
    :meth:`close_nowait`; the protocol offers itself to it in the ASGI scope
    under :data:`~oada_jobs.server.ws.DIRECT_SEND`. Such sends do not wait
    for the transport to drain: :meth:`send_text_nowait` says how many bytes
    are waiting (the frames of this pass and the transport's write buffer),
    and the session closes a socket whose peer lets that pass its budget
    (``ws_send_buffer_bytes``). Whatever ends a connection without the
    peer's help (the close handshake or a keepalive ping timing out) aborts
    the transport, dropping its buffer: a peer that does not read would
    otherwise hold it for as long as TCP keeps the connection up.

    *Receiving.* uvicorn stops reading the socket after every message until
    the application has taken it: two system calls (or two loop passes
    under TLS) per request. Here reading pauses only while the application
    is :data:`READ_AHEAD` messages or :data:`READ_AHEAD_BYTES` bytes behind,
    so a peer that pipelines large frames cannot make the server hold more
    than that (plus the frame being assembled) for it.
    """

    _batching = False
    #: Sizes of the received messages queued for the application, in order.
    _sizes: deque[int]
    #: Their sum.
    _queued_bytes = 0
    #: Bytes of the frames sent this pass, not yet written to the transport.
    _batched = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sizes = deque()

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        if self.response.status_code == 101:
            extensions = cast(dict[str, Any], self.scope["extensions"])
            extensions[DIRECT_SEND] = self

    # -- receiving ---------------------------------------------------------------

    def send_receive_event_to_app(self) -> None:
        size = sum(len(frame) for frame in self.frames)
        queued = self.queue.qsize()
        # Marked paused, uvicorn queues the message without pausing.
        paused, self.read_paused = self.read_paused, True
        super().send_receive_event_to_app()
        self.read_paused = paused
        if self.queue.qsize() > queued:
            self._sizes.append(size)
            self._queued_bytes += size
        if not paused and (
            self.queue.qsize() > READ_AHEAD or self._queued_bytes > READ_AHEAD_BYTES
        ):
            # receive() resumes once the application has taken them all.
            self.read_paused = True
            self.transport.pause_reading()

    async def receive(self) -> Any:
        message = await super().receive()
        if message["type"] == "websocket.receive":
            self._queued_bytes -= self._sizes.popleft()
        return message

    # -- sending -----------------------------------------------------------------

    async def send(self, message: Any) -> None:
        text = message.get("text") if message["type"] == "websocket.send" else None
        if text is None or not self.handshake_complete or self.initial_response is not None:
            await super().send(message)
            if message["type"] == "websocket.close" and self.close_timer is not None:
                # uvicorn then closes the transport, which waits for a drain
                # that a peer that reads nothing never allows: abort instead.
                self.close_timer.cancel()
                self.close_timer = self.loop.call_later(self.close_timeout, self.transport.abort)
            return
        await self.writable.wait()
        if self.disconnected:
            raise ClientDisconnected()
        if self.close_sent:
            await super().send(message)  # uvicorn's error for a send after close
            return
        data = text.encode()
        try:
            self.conn.send_text(data)
        except InvalidState:
            raise ClientDisconnected() from None
        self._batched += len(data)
        self._batch()

    def send_text_nowait(self, text: str) -> int:
        """Send a text frame (with the others of this pass) without waiting.

        Returns :meth:`buffered_bytes` after it. Frames for a socket that is
        closed or closing are dropped (and 0 is returned).
        """
        if self.disconnected or self.close_sent or self.transport.is_closing():
            return 0
        data = text.encode()
        try:
            self.conn.send_text(data)
        except InvalidState:
            return 0
        self._batched += len(data)
        self._batch()
        return self._batched + self.transport.get_write_buffer_size()

    def buffered_bytes(self) -> int:
        """Bytes sent and not yet taken by the peer's kernel.

        The frames of this pass (counted before compression, which only
        shrinks them) and the transport's write buffer (TLS records
        included); 0 once the connection is gone.
        """
        if self.disconnected:
            return 0
        return self._batched + self.transport.get_write_buffer_size()

    def close_nowait(self, code: int, reason: str = "") -> None:
        """Start the closing handshake after the frames sent so far.

        The application receives a disconnect; a peer that does not answer
        the close frame within ``close_timeout`` is cut off (it may not be
        reading at all, so the frame may never leave the buffer).
        """
        if self.disconnected or self.close_sent or self.transport.is_closing():
            return
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        self.conn.send_close(code, reason)
        self._write()
        self.close_sent = True
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        self.close_timer = self.loop.call_later(self.close_timeout, self.transport.abort)

    def keepalive_timeout(self) -> None:
        super().keepalive_timeout()
        # uvicorn closes the transport, which waits for its buffer to drain:
        # for a peer that reads nothing, never.
        if self.close_sent and not self.disconnected:
            self.transport.abort()

    def _batch(self) -> None:
        if not self._batching:
            self._batching = True
            self.loop.call_soon(self._end_batch)

    def _end_batch(self) -> None:
        self._batching = False
        self._write()

    def _write(self) -> None:
        self._batched = 0
        output = self.conn.data_to_send()
        if output and not self.transport.is_closing():
            self.transport.write(b"".join(output))


class BoundedHttpProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol, with the size of a request head and its reading time bounded.

    uvicorn bounds neither: a request line and headers may grow without end
    (llhttp buffers a header however long it is), and a client may take
    forever to send a request, holding one of the ``max_connections`` slots
    with it; a thousand peers trickling a byte now and then would deny
    service to everyone. Here

    * a request whose line and headers pass :attr:`max_head_bytes` before
      they end is answered **431** and its connection closed;
    * a request not received whole (line, headers and body) within
      :attr:`read_timeout` seconds of its first byte, or of the connection
      being made, is answered **408** (unless its answer has begun) and its
      connection closed; the application then sees the client gone, so a
      half-received write is never applied.

    The clock stops while a pipelined request waits for the one before it
    to be answered (it is not being read then) and once a connection turns
    into a WebSocket. :func:`uvicorn_config` makes a subclass holding the
    server's limits.
    """

    #: Bytes of request line and headers accepted (``max_header_bytes``).
    max_head_bytes: int = 64 * 1024
    #: Seconds to receive one request whole (``request_read_timeout``).
    read_timeout: float = 60.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._head_bytes = 0
        self._in_head = True
        # Heads and requests read whole so far.
        self._heads = 0
        self._deadline: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        heads = self._heads
        super().data_received(data)
        if self._in_head and self._heads == heads:
            # No head nor request ended in this read, and a head is being
            # read: all of this read was head. (A read that ended something
            # is not counted: the next head's count starts with the next read.)
            self._head_bytes += len(data)
            if self._head_bytes > self.max_head_bytes and not self.transport.is_closing():
                self._refuse(431, f"request headers over {self.max_head_bytes} bytes")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = 0
        self._arm()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._heads += 1
        super().on_headers_complete()
        if self.pipeline and self.pipeline[0][0] is self.cycle:
            # Queued behind the request before it: not read until that is answered.
            self._disarm()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._heads += 1
        self._in_head = True
        self._head_bytes = 0
        self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        cycle = self.cycle
        if cycle is not None and cycle.more_body and not self.transport.is_closing():
            # A pipelined request whose body is read from now on.
            self._arm()

    def handle_websocket_upgrade(self) -> None:
        self._disarm()
        super().handle_websocket_upgrade()

    def _arm(self) -> None:
        if self._deadline is None:
            self._deadline = self.loop.call_later(self.read_timeout, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self._refuse(408, f"the request was not received within {self.read_timeout:g} s")

    def _refuse(self, status: int, message: str) -> None:
        """Answer *status* (unless an answer has begun) and close the connection."""
        self._disarm()
        cycle = self.cycle
        if cycle is None or cycle.response_complete or not cycle.response_started:
            body = message.encode("ascii")
            self.transport.write(
                b"".join(
                    [
                        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n".encode("ascii"),
                        b"content-type: text/plain; charset=utf-8\r\n",
                        b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                        b"connection: close\r\n\r\n",
                        body,
                    ]
                )
            )
        self.transport.close()


def http_protocol(config: ServerConfig) -> type[BoundedHttpProtocol]:
    """:class:`BoundedHttpProtocol` holding *config*'s limits."""
    return type(
        "BoundedHttpProtocol",
        (BoundedHttpProtocol,),
        {
            "max_head_bytes": config.max_header_bytes,
            "read_timeout": config.request_read_timeout,
        },
    )
