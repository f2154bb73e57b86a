"""Memory of a server process under large writes and WebSockets that never read.

``python -m bench.server_memory_bytes [--writes 200,600] [--sockets 1,3] [--changes 200]``
starts ``oada-jobs serve`` in a child process (a SQLite file in a temporary
directory, default settings) for each case and prints the child's resident
set size before and after:

*writes*
    one-MiB PUTs, each to a resource of its own, over HTTP; RSS is printed
    after each count in ``--writes`` (one server, counts cumulative).
*sockets*
    that many WebSockets watch one resource and never read (their receive
    buffers are kept small, so the server cannot park data in the kernel);
    then ``--changes`` one-MiB PUTs change the resource. RSS is printed
    before, after the changes, and after the sockets are closed.

Only loopback is used. Each case is run once; the CPU is shared, so do not
loop it.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import tempfile
from pathlib import Path

import anyio
import anyio.to_thread
import httpx
import psutil

from oada_jobs.testing import embedded_server

_MIB = 2**20
_AUTH = {"authorization": "Bearer god", "content-type": "application/json"}
#: One MiB of JSON string (the PUT body adds a few bytes around it).
_BLOB = "x" * (_MIB - 32)
#: Receive buffer of a never-reading socket: the kernel then holds little of
#: what the server sends, and the rest stays (or not) in the server.
_SMALL_RCVBUF = 4096


def _rss(pid: int) -> float:
    return float(psutil.Process(pid).memory_info().rss) / _MIB


def _watching_socket(port: int, path: str) -> socket.socket:
    """A raw WebSocket that watches *path* and then reads nothing (blocking; run in a thread)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SMALL_RCVBUF)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise RuntimeError("the server closed the socket during the handshake")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(f"no WebSocket upgrade: {head[:80]!r}")
    request = json.dumps(
        {"requestId": "w", "method": "watch", "path": path, "headers": _AUTH}
    ).encode()
    # A masked client text frame (mask of zeros: the payload goes as is).
    size = len(request)
    header = bytes([0x81]) + (
        bytes([0x80 | size]) if size < 126 else bytes([0x80 | 126]) + size.to_bytes(2, "big")
    )
    sock.sendall(header + b"\0\0\0\0" + request)
    return sock


async def _writes(counts: list[int]) -> None:
    with tempfile.TemporaryDirectory(prefix="oada-bench-bytes-") as tmp:
        async with (
            embedded_server(subprocess=True, db=Path(tmp) / "oada.sqlite") as server,
            httpx.AsyncClient(base_url=server.url, headers=_AUTH, timeout=60) as http,
        ):
            pid = server.pid
            assert pid is not None
            print(f"writes: server RSS before {_rss(pid):7.1f} MiB", flush=True)
            done = 0
            for count in counts:
                for n in range(done, count):
                    response = await http.put(f"/resources/big{n}", json={"blob": _BLOB})
                    response.raise_for_status()
                done = count
                print(
                    f"writes: after {count:4} one-MiB writes, RSS {_rss(pid):7.1f} MiB", flush=True
                )


async def _sockets(sockets: int, changes: int) -> None:
    with tempfile.TemporaryDirectory(prefix="oada-bench-bytes-") as tmp:
        async with (
            embedded_server(subprocess=True, db=Path(tmp) / "oada.sqlite") as server,
            httpx.AsyncClient(base_url=server.url, headers=_AUTH, timeout=60) as http,
        ):
            pid = server.pid
            assert pid is not None
            (await http.put("/resources/watched", json={"n": 0})).raise_for_status()
            peers = [
                await anyio.to_thread.run_sync(_watching_socket, server.port, "/resources/watched")
                for _ in range(sockets)
            ]
            try:
                # Let the watches be answered (and sit unread).
                await anyio.sleep(0.5)
                print(
                    f"sockets={sockets}: RSS before {_rss(pid):7.1f} MiB",
                    flush=True,
                )
                for n in range(1, changes + 1):
                    response = await http.put("/resources/watched", json={"n": n, "blob": _BLOB})
                    response.raise_for_status()
                await anyio.sleep(0.5)
                print(
                    f"sockets={sockets}: after {changes} one-MiB changes, RSS {_rss(pid):7.1f} MiB",
                    flush=True,
                )
            finally:
                for peer in peers:
                    peer.close()
            # Long enough for the server to see the closes (and for closing
            # handshakes it started to time out).
            await anyio.sleep(12)
            await http.get("/bookmarks")
            print(f"sockets={sockets}: after closing them, RSS {_rss(pid):7.1f} MiB", flush=True)


async def main(writes: list[int], sockets: list[int], changes: int) -> None:
    if writes:
        await _writes(sorted(writes))
    for count in sockets:
        await _sockets(count, changes)


def _counts(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.server_memory_bytes", description=__doc__
    )
    parser.add_argument("--writes", type=_counts, default=[200, 600], help="e.g. 200,600 ('' none)")
    parser.add_argument("--sockets", type=_counts, default=[1, 3], help="e.g. 1,3 ('' none)")
    parser.add_argument("--changes", type=int, default=200, help="one-MiB changes per socket case")
    args = parser.parse_args(argv)
    anyio.run(main, args.writes, args.sockets, args.changes)
    return 0


if __name__ == "__main__":
    raise SystemExit(cli())
