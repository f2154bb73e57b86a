"""A TCP relay on 127.0.0.1 that tests can cut, to drop a client's sockets mid-stream."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

import anyio
import anyio.abc


class Relay:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.cuts = 0
        self._streams: set[anyio.abc.SocketStream] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def cut(self) -> None:
        """Close every relayed connection now (new ones are still accepted)."""
        self.cuts += 1
        for stream in list(self._streams):
            with suppress(Exception):
                await stream.aclose()
        self._streams.clear()

    async def _pipe(self, source: anyio.abc.SocketStream, sink: anyio.abc.SocketStream) -> None:
        with suppress(Exception):
            async for chunk in source:
                await sink.send(chunk)
        with suppress(Exception):
            await sink.aclose()

    async def _serve(self, client: anyio.abc.SocketStream) -> None:
        try:
            upstream = await anyio.connect_tcp("127.0.0.1", self.upstream_port)
        except OSError:
            await client.aclose()
            return
        self._streams |= {client, upstream}
        async with anyio.create_task_group() as group:
            group.start_soon(self._pipe, client, upstream)
            group.start_soon(self._pipe, upstream, client)
        self._streams -= {client, upstream}


@asynccontextmanager
async def relay(upstream_port: int) -> AsyncIterator[Relay]:
    relay = Relay(upstream_port)
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    relay.port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as group:
        group.start_soon(listener.serve, relay._serve)
        try:
            yield relay
        finally:
            await relay.cut()
            group.cancel_scope.cancel()
