"""Property-based fuzzing of the embedded server over HTTP and WebSocket.

Three users (``god``/sam, ``abc``/frank, and ``ro``, a read-only token) send
requests with hostile paths, keys, headers, bodies and revs. Whatever they
send:

* no answer is a 5xx, and the server keeps serving (a GET and a ping work
  after every example);
* a refused request (4xx) leaves the store exactly as it was;
* a secret sam planted never appears in anything frank or the reader get;
* the read-only token never changes the store, nor creates anything.

The server is shared by all examples of a test, so state built by earlier
examples (links, watches, odd keys) is there for later ones.
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
from anyio.abc import SocketStream
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import ClientConnection, connect

from oada_jobs.server.config import DEFAULT_TOKENS, TokenInfo
from oada_jobs.testing import EmbeddedServer, embedded_server

SECRET = f"S3CRET-{uuid.uuid4().hex}"
SECRET_ID = "sam-secret"
READER = TokenInfo(
    user="users/reader", bookmarks="resources/reader_bookmarks", scopes=("all:read",)
)
USERS = ("god", "abc", "ro")

# -- a raw HTTP/1.1 client: paths exactly as written (httpx normalises "..") ----------


class RawHTTP:
    """One keep-alive connection sending requests byte for byte."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.stream: SocketStream | None = None
        self.buffer = b""

    async def close(self) -> None:
        if self.stream is not None:
            await self.stream.aclose()
            self.stream = None

    async def _read_until(self, marker: bytes) -> bytes:
        assert self.stream is not None
        while marker not in self.buffer:
            self.buffer += await self.stream.receive()
        head, _, self.buffer = self.buffer.partition(marker)
        return head

    async def _read_exactly(self, n: int) -> bytes:
        assert self.stream is not None
        while len(self.buffer) < n:
            self.buffer += await self.stream.receive()
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    async def request(
        self, method: str, path: bytes, headers: dict[bytes, bytes], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        reused = self.stream is not None
        try:
            return await self._request(method, path, headers, body)
        except (OSError, anyio.EndOfStream, anyio.BrokenResourceError):
            await self.close()
            if not reused:
                raise
        # The server closed an idle keep-alive connection (uvicorn does after
        # 5 s): once more on a new one.
        return await self._request(method, path, headers, body)

    async def _request(
        self, method: str, path: bytes, headers: dict[bytes, bytes], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        if self.stream is None:
            self.stream = await anyio.connect_tcp("127.0.0.1", self.port)
            self.buffer = b""
        lines = [method.encode() + b" " + path + b" HTTP/1.1", b"host: 127.0.0.1"]
        lines += [name + b": " + value for name, value in headers.items()]
        lines.append(b"content-length: " + str(len(body)).encode())
        await self.stream.send(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        with anyio.fail_after(30):
            head = await self._read_until(b"\r\n\r\n")
            status_line, *header_lines = head.decode("latin-1").split("\r\n")
            status = int(status_line.split(" ")[1])
            got: dict[str, str] = {}
            for line in header_lines:
                name, _, value = line.partition(":")
                got[name.strip().lower()] = value.strip()
            length = int(got.get("content-length", "0"))
            if method == "HEAD" or status in (204, 304):
                length = 0
            data = await self._read_exactly(length)
        if got.get("connection", "").lower() == "close":
            await self.close()
        return status, got, data


# -- WebSocket: one socket per user, answers matched by requestId ------------------------


_ids = itertools.count(1)


@dataclass
class Socket:
    user: str
    conn: ClientConnection
    seen: list[str] = field(default_factory=list)

    async def _next(self) -> dict[str, Any]:
        with anyio.fail_after(30):
            raw = await self.conn.recv()
        text = raw if isinstance(raw, str) else raw.decode()
        self.seen.append(text)
        message: dict[str, Any] = json.loads(text)
        return message

    async def request(self, frame: str, request_id: str) -> dict[str, Any]:
        """Send *frame*; the answer to it (change notifications are read past)."""
        await self.conn.send(frame)
        while True:
            message = await self._next()
            rid = message.get("requestId")
            if "change" in message:
                continue
            if rid == request_id or rid == ["error"]:
                return message


@dataclass(repr=False)
class World:
    server: EmbeddedServer
    http: dict[str, RawHTTP]
    sockets: dict[str, Socket]

    def __repr__(self) -> str:
        return f"World({self.server.url})"

    def dump(self) -> list[Any]:
        core = self.server.core
        assert core is not None
        db = core.store.db
        return [
            db.execute("SELECT id, rev, doc, data FROM resources ORDER BY id").fetchall(),
            db.execute("SELECT * FROM changes ORDER BY resource_id, rev").fetchall(),
            db.execute("SELECT * FROM edges ORDER BY parent, path").fetchall(),
        ]

    def exists(self, resource_id: str) -> bool:
        core = self.server.core
        assert core is not None
        return core.store.get(resource_id) is not None


@pytest.fixture
async def world() -> AsyncIterator[World]:
    tokens = {**DEFAULT_TOKENS, "ro": READER}
    async with embedded_server(tokens=tokens) as server:
        http = {user: RawHTTP(server.port) for user in USERS}
        sockets: dict[str, Socket] = {}
        try:
            for user in USERS:
                # First use creates each user's bookmarks and shares, so that
                # no refused request later does.
                status, _, _ = await http[user].request(
                    "GET", b"/bookmarks", {b"authorization": f"Bearer {user}".encode()}, b""
                )
                assert status == 200
            god = http["god"]
            auth = {b"authorization": b"Bearer god", b"content-type": b"application/json"}
            body = json.dumps({"secret": SECRET, "list": [1, {"a": SECRET}]}).encode()
            assert (await god.request("PUT", f"/resources/{SECRET_ID}".encode(), auth, body))[
                0
            ] == 201
            link = json.dumps({"_id": f"resources/{SECRET_ID}", "_rev": 0}).encode()
            assert (await god.request("PUT", b"/bookmarks/secret", auth, link))[0] == 201
            async with (
                connect(server.ws_url, max_size=None) as c1,
                connect(server.ws_url, max_size=None) as c2,
                connect(server.ws_url, max_size=None) as c3,
            ):
                for user, conn in zip(USERS, (c1, c2, c3), strict=True):
                    sockets[user] = Socket(user, conn)
                # Frank watches sam's secret and his own bookmarks from the start.
                for user in ("abc", "ro"):
                    rid = f"w{next(_ids)}"
                    frame = json.dumps(
                        {
                            "requestId": rid,
                            "method": "watch",
                            "path": "/bookmarks",
                            "headers": {"authorization": f"Bearer {user}", "x-oada-rev": "0"},
                        }
                    )
                    assert (await sockets[user].request(frame, rid))["status"] == 200
                yield World(server, http, sockets)
        finally:
            for client in http.values():
                await client.close()


# -- strategies ----------------------------------------------------------------------

HOSTILE_TEXT = st.sampled_from(
    [
        "",
        ".",
        "..",
        "~",
        "~0",
        "~1",
        "~2",
        "%2F",
        "%2e%2e",
        "%00",
        "a/b",
        "_meta",
        "_rev",
        "_id",
        "_type",
        "_changes",
        "_owner",
        "_permissions",
        "0",
        "01",
        "-1",
        "9" * 30,
        "9" * 5000,
        "\u00e9",
        "\u2603",
        "\udc80",
        "\ud800x",
        "\x00",
        "\n",
        "\r\n",
        "\x7f",
        "k" * 20_000,
        " ",
        "\t",
    ]
)
KEYS = HOSTILE_TEXT | st.text(max_size=8)
SEGMENTS = HOSTILE_TEXT | st.text(max_size=6) | st.sampled_from(["a", "b", "list", "secret"])
NUMBERS = st.sampled_from(
    [
        "0",
        "1",
        "5",
        "+1",
        " 1",
        "1 ",
        "-1",
        "1e3",
        "0x10",
        "1_0",
        "\u0665",
        "\u00b2",
        "9" * 19,
        str(2**63 - 1),
        str(2**63),
        "9" * 30,
        "9" * 5000,
        "abc",
        "",
    ]
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | HOSTILE_TEXT
    | st.text(max_size=10)
)
VALUES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(KEYS, children, max_size=3),
    max_leaves=12,
)
RAW_BODIES = st.sampled_from(
    [
        "",
        "   ",
        "{",
        '{"a":NaN}',
        '{"a":1e400}',
        '{"a":"\\udc80","n":123456789012345678901234567890}',
        '{"\\ud800":1}',
        "\ufeff{}",
        "[" * 65 + "]" * 65,
        '{"a":' * 63 + "1" + "}" * 63,
        '{"a":' * 65 + "1" + "}" * 65,
        "[" * 300 + "]" * 300,
        "[" * 1100 + "]" * 1100,
        '{"n":1' + "0" * 400 + "}",
        '{"_id":"resources/a\\nb"}',
        '{"_id":"resources/' + SECRET_ID + '"}',
        '{"_meta":5}',
        '{"_type":5}',
        "[1,2]",
        "5",
        "null",
    ]
)
CONTENT_TYPES = st.sampled_from(
    [
        "application/json",
        "application/vnd.oada.foo.1+json",
        "text/plain",
        "application/\udc80+json",
        "application/json; charset=\x00",
        " ",
        "",
        "\u00e9/json",
    ]
)
METHODS = st.sampled_from(["get", "head", "put", "post", "delete"])
WS_METHODS = METHODS | st.sampled_from(["watch", "get-watch", "put-watch", "unwatch", "ping"])
PREFIXES = st.sampled_from(
    [
        "/bookmarks",
        "/shares",
        f"/resources/{SECRET_ID}",
        "/resources/x",
        "/resources",
        "/users/me",
        "",
    ]
)


@dataclass
class Request:
    transport: str
    user: str
    method: str
    path: str
    headers: dict[str, str]
    body: Any  # a JSON value, or raw text (str) when raw is set
    raw: bool


@st.composite
def requests(draw: st.DrawFn) -> Request:
    transport = draw(st.sampled_from(["http", "ws"]))
    user = draw(st.sampled_from(USERS))
    method = draw(WS_METHODS if transport == "ws" else METHODS)
    segments = draw(st.lists(SEGMENTS, max_size=4))
    path = draw(PREFIXES) + "".join("/" + s for s in segments)
    headers: dict[str, str] = {"authorization": f"Bearer {user}"}
    if draw(st.booleans()):
        headers["content-type"] = draw(CONTENT_TYPES)
    elif method in ("put", "post", "put-watch"):
        headers["content-type"] = "application/json"
    for name in ("x-oada-rev", "if-match", "if-none-match"):
        if draw(st.integers(0, 4)) == 0:
            number = draw(NUMBERS)
            headers[name] = number if name == "x-oada-rev" else f'"{number}"'
    if draw(st.integers(0, 6)) == 0:
        headers[draw(st.sampled_from(["x-oada-ensure-link", "x-\udc80", "accept", "x"]))] = draw(
            HOSTILE_TEXT | st.sampled_from(["versioned", "unversioned"])
        )
    raw = draw(st.booleans())
    body = draw(RAW_BODIES if raw else VALUES)
    return Request(transport, user, method, path, headers, body, raw)


def _http_path(path: str) -> bytes:
    """A request target: anything but printable ASCII percent-encoded (kept literal)."""
    out = bytearray()
    for byte in path.encode("utf-8", "surrogatepass"):
        out += bytes([byte]) if 0x21 <= byte <= 0x7E else f"%{byte:02X}".encode()
    return bytes(out) or b"/"


def _http_headers(headers: dict[str, str]) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    for name, value in headers.items():
        if not name.isascii() or not name.isprintable() or not name.replace("-", "").isalnum():
            continue  # not sendable over HTTP at all
        encoded = value.encode("latin-1", "replace")
        if any((b < 0x20 and b != 0x09) or b == 0x7F for b in encoded):
            continue  # HTTP has no way to carry it
        out[name.encode()] = encoded.strip()
    return out


def _body_text(req: Request) -> str:
    if req.raw:
        return str(req.body)
    return json.dumps(req.body)  # lone surrogates become \\udcXX escapes


async def send(world: World, req: Request) -> tuple[int, str]:
    """Send *req*; its status and everything received for it, as text."""
    if req.transport == "http":
        body = _body_text(req).encode("utf-8", "surrogatepass")
        if req.method not in ("put", "post"):
            body = b""
        status, headers, data = await world.http[req.user].request(
            req.method.upper(), _http_path(req.path), _http_headers(req.headers), body
        )
        return status, json.dumps(headers) + data.decode("utf-8", "replace")
    rid = f"f{next(_ids)}"
    envelope = {"requestId": rid, "method": req.method, "path": req.path, "headers": req.headers}
    frame = json.dumps(envelope)
    if req.method in ("put", "post", "put-watch", "post-watch"):
        frame = frame[:-1] + ', "data": ' + _body_text(req) + "}"
    socket = world.sockets[req.user]
    answer = await socket.request(frame, rid)
    status = answer.get("status", 0)
    assert isinstance(status, int), answer
    return status, json.dumps(answer)


async def check_example(world: World, batch: list[Request]) -> None:
    for req in batch:
        before = world.dump()
        status, text = await send(world, req)
        assert status < 500, (req, status, text[:500])
        after = world.dump()
        if status >= 400:
            assert after == before, (req, status, text[:300])
        if req.user == "ro":
            assert after == before, ("the read-only token changed the store", req, status)
        if req.user != "god":
            assert SECRET not in text, (req, status)
    # Still serving, over both transports.
    god = world.http["god"]
    status, _, data = await god.request(
        "GET", b"/bookmarks", {b"authorization": b"Bearer god"}, b""
    )
    assert status == 200, data
    for socket in world.sockets.values():
        rid = f"p{next(_ids)}"
        pong = await socket.request(
            json.dumps({"requestId": rid, "method": "ping", "path": "", "headers": {}}), rid
        )
        assert pong == {"requestId": rid, "status": 204}
    for user in ("abc", "ro"):
        # Change notifications included.
        assert not any(SECRET in text for text in world.sockets[user].seen), user


FUZZ = settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,  # one server for all examples, on purpose
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)


@FUZZ
@given(batch=st.lists(requests(), min_size=1, max_size=4))
async def test_hostile_requests_are_refused_or_served_never_fatal(
    world: World, batch: list[Request]
) -> None:
    await check_example(world, batch)
