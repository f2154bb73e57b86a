"""The WebSocket side against a scripted server: framing, matching, watches, reconnects."""

from __future__ import annotations

import logging
import socket
from typing import Any

import anyio
import pytest
from client_helpers import TOKEN
from fake_oada import RID, FakeOADA
from websockets.client import ClientProtocol
from websockets.datastructures import Headers
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

from oada_jobs.client import Change, OADAClient, Watch
from oada_jobs.client._ws import _Socket
from oada_jobs.exceptions import (
    ClientClosed,
    NotFound,
    OADATimeout,
    OADATransportError,
    WatchLost,
)


def client(fake: FakeOADA, **options: Any) -> OADAClient:
    options.setdefault("connection", "ws")
    options.setdefault("max_backoff", 0.05)
    return OADAClient(fake.domain, TOKEN, **options)


async def take(watch: Watch[Any], count: int) -> list[Any]:
    items = []
    with anyio.fail_after(10):
        async for item in watch:
            items.append(item)
            if len(items) == count:
                break
    return items


def revs(changes: list[Change]) -> list[int]:
    return [change.rev for change in changes]


async def test_requests_travel_as_json_messages_with_the_token() -> None:
    fake = FakeOADA()
    async with fake.running(), client(fake) as oada:
        assert oada.connection == "ws"
        put = await oada.put("/bookmarks/r", {"a": 1})
        got = await oada.get("/bookmarks/r")
        head = await oada.head("/bookmarks/r")
    assert put.status == 201
    assert put.resource_id == RID
    assert got.data == {"a": 1, "_id": RID, "_rev": 2}
    assert head.etag == '"R/2"'
    assert head.data is None
    message = fake.received[0]
    assert message["method"] == "put"
    assert message["path"] == "/bookmarks/r"
    assert message["data"] == {"a": 1}
    assert message["headers"]["authorization"] == f"Bearer {TOKEN}"
    assert message["headers"]["content-type"] == "application/json"
    assert fake.connects == 1  # one multiplexed socket


async def test_auto_prefers_the_websocket() -> None:
    fake = FakeOADA()
    async with fake.running(), OADAClient(fake.domain, TOKEN) as oada:
        assert oada.connection == "ws"
        await oada.get("/bookmarks/r")


async def test_garbage_and_duplicate_answers_are_ignored() -> None:
    fake = FakeOADA()
    fake.garbage = True
    fake.duplicate_answers = True
    async with fake.running(), client(fake) as oada:
        first = await oada.get("/bookmarks/r")
        second = await oada.get("/bookmarks/r")
    assert first.data == second.data == {"_id": RID, "_rev": 1}


async def test_fragmented_messages_are_put_together() -> None:
    fake = FakeOADA()
    fake.fragmented = True
    async with fake.running(), client(fake) as oada:
        assert (await oada.get("/bookmarks/r")).data == {"_id": RID, "_rev": 1}
        async with oada.watch("/bookmarks/r") as watch:
            for n in range(3):
                await fake.write({"n": n})
            changes = await take(watch, 3)
    assert revs(changes) == [2, 3, 4]
    assert [change.body["n"] for change in changes] == [0, 1, 2]


async def test_messages_read_before_routing_starts_are_routed_first_in_order() -> None:
    sock = _Socket(ClientProtocol(parse_uri("ws://127.0.0.1/"), state=State.OPEN))
    sock.response = Response(101, "Switching Protocols", Headers())  # as after the handshake
    sock.process_event(Frame(Opcode.TEXT, b"one"))
    sock.process_event(Frame(Opcode.TEXT, b"t", fin=False))
    sock.process_event(Frame(Opcode.CONT, b"wo"))
    routed: list[bytes] = []
    sock.deliver_to(routed.append)
    sock.process_event(Frame(Opcode.PING, b""))  # not a message
    sock.process_event(Frame(Opcode.BINARY, b"three"))
    assert routed == [b"one", b"two", b"three"]


async def test_concurrent_requests_are_matched_by_request_id() -> None:
    fake = FakeOADA()
    async with fake.running(), client(fake, concurrency=20) as oada:
        results: dict[int, Any] = {}

        async def one(i: int) -> None:
            results[i] = await (oada.get("/missing") if i % 3 == 0 else oada.head("/bookmarks/r"))

        async def guarded(i: int) -> None:
            try:
                await one(i)
            except NotFound as error:
                results[i] = error

        async with anyio.create_task_group() as group:
            for i in range(30):
                group.start_soon(guarded, i)
    for i, result in results.items():
        if i % 3 == 0:
            assert isinstance(result, NotFound)
            assert result.message == "nothing here"
        else:
            assert result.status == 200


async def test_requests_made_together_leave_in_one_socket_write() -> None:
    fake = FakeOADA()
    async with fake.running(), client(fake, concurrency=20) as oada:
        await oada.head("/bookmarks/r")  # opens the socket
        ws = oada._shared.ws
        assert ws is not None
        assert ws._socket is not None
        transport = ws._socket.transport
        writes: list[bytes] = []
        real_write = transport.write

        def counting_write(data: bytes | bytearray | memoryview) -> None:
            writes.append(bytes(data))
            real_write(data)

        transport.write = counting_write  # type: ignore[method-assign]
        answers = []

        async def one() -> None:
            answers.append(await oada.head("/bookmarks/r"))

        async with anyio.create_task_group() as group:
            for _ in range(20):
                group.start_soon(one)
        request_writes = len(writes)
    assert [answer.status for answer in answers] == [200] * 20
    assert len(fake.received) == 21
    # All twenty were made in one event-loop pass: their frames share a write.
    assert request_writes == 1


async def test_requests_dropped_before_their_write_are_sent_on_a_new_socket() -> None:
    fake = FakeOADA()
    async with fake.running(), client(fake, concurrency=20) as oada:
        await oada.head("/bookmarks/r")
        ws = oada._shared.ws
        assert ws is not None
        first = ws._socket
        assert first is not None
        statuses: list[int] = []

        async def put(i: int) -> None:
            statuses.append((await oada.put("/bookmarks/r", {"i": i})).status)

        async def cut() -> None:
            first.transport.abort()

        async with anyio.create_task_group() as group:
            for i in range(5):
                group.start_soon(put, i)
            # Runs after the five queued their frames and before the write.
            group.start_soon(cut)
    # Never sent, so retried even though PUTs are not retried once sent.
    assert statuses == [201] * 5
    assert fake.connects == 2
    assert sorted(m["data"]["i"] for m in fake.received if m["method"] == "put") == [0, 1, 2, 3, 4]


async def test_a_server_that_stops_reading_does_not_grow_the_write_buffer() -> None:
    fake = FakeOADA()
    body = {"blob": "x" * 512 * 1024}
    async with fake.running(), client(fake, concurrency=5, timeout=0.5) as oada:
        await oada.head("/bookmarks/r")
        ws = oada._shared.ws
        assert ws is not None
        assert ws._socket is not None
        transport = ws._socket.transport
        for conn in fake.connections:
            conn.transport.pause_reading()
        buffered: list[int] = []
        errors: list[str] = []

        async def worker() -> None:
            for _ in range(4):
                try:
                    await oada.put("/bookmarks/r", body)
                except OADATimeout as error:
                    errors.append(str(error))
                buffered.append(transport.get_write_buffer_size())

        async with anyio.create_task_group() as group:
            for _ in range(5):
                group.start_soon(worker)
    assert len(errors) == 20
    # Requests wait for room instead of piling up behind the first five
    # (20 x 512 KiB would be 10 MiB); those that never got room say so.
    assert max(buffered) < 4 * 2**20
    assert any("the request was not sent" in error for error in errors)


async def test_watch_delivers_changes_in_order_and_unwatches() -> None:
    fake = FakeOADA()
    async with fake.running(), client(fake) as oada:
        async with oada.watch("/bookmarks/r") as watch:
            assert watch.rev == 1
            for i in range(3):
                await fake.write({"n": i})
            changes = await take(watch, 3)
            assert watch.rev == 4
        request_id = watch.request_id
        with anyio.fail_after(5):
            await fake.unwatched.wait()
    assert revs(changes) == [2, 3, 4]
    assert [change.body["n"] for change in changes if change.body] == [0, 1, 2]
    assert all(change.type == "merge" and change.path == "" for change in changes)
    unwatch = next(m for m in fake.received if m["method"] == "unwatch")
    assert unwatch["requestId"] == request_id


async def test_watch_from_a_rev_replays_then_goes_live() -> None:
    fake = FakeOADA()
    async with fake.running():
        for i in range(4):
            await fake.write({"n": i})  # revs 2..5
        async with client(fake) as oada, oada.watch("/bookmarks/r", rev=3) as watch:
            await fake.write({"n": "live"})
            changes = await take(watch, 3)
    assert revs(changes) == [4, 5, 6]
    sent = next(m for m in fake.received if m["method"] == "watch")
    assert sent["headers"]["x-oada-rev"] == "3"


async def test_get_watch_and_tree_watch() -> None:
    fake = FakeOADA()
    async with fake.running(), client(fake) as oada:
        await oada.put("/bookmarks/r", {"a": 1})
        async with oada.watch("/bookmarks/r", type="tree", initial_method="get") as watch:
            assert watch.response is not None
            assert watch.response.data == {"a": 1, "_rev": 2}
            await fake.write({"b": 2})
            [array] = await take(watch, 1)
    assert isinstance(array, list)
    assert revs(array) == [3]


async def test_watch_survives_dropped_sockets_exactly_once_in_order(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    fake = FakeOADA()
    fake.duplicate_answers = True  # the reference server's resume quirk
    fake.overlap_replay = True  # replays start one rev early: must be dropped
    async with fake.running(), client(fake) as oada, oada.watch("/bookmarks/r") as watch:
        await fake.write({"n": 2})
        await fake.write({"n": 3})
        seen = await take(watch, 1)
        for _ in range(3):
            await fake.drop()
            # Written while the client is disconnected: must come by replay.
            await fake.write({"n": "offline"})
            await fake.write({"n": "offline"})
        seen += await take(watch, 7)
        await fake.write({"n": "live"})
        seen += await take(watch, 1)
        resumes = [m for m in fake.received if m["method"] == "watch"]
    assert revs(seen) == list(range(2, 11))
    assert watch.rev == 10
    assert fake.connects >= 2
    # Each re-issue names the last rev the watch had queued.
    assert resumes[0]["headers"].get("x-oada-rev") is None
    assert all("x-oada-rev" in m["headers"] for m in resumes[1:])
    assert "restored the watch" in caplog.text
    client_side = [r for r in caplog.records if not r.name.startswith("websockets.server")]
    assert client_side
    assert all(TOKEN not in record.getMessage() for record in client_side)


async def test_watch_survives_a_server_restart() -> None:
    fake = FakeOADA()
    first = fake.running()
    await first.__aenter__()
    port = fake.port
    try:
        async with client(fake) as oada, oada.watch("/bookmarks/r") as watch:
            await fake.write({"n": 1})
            seen = await take(watch, 1)
            await first.__aexit__(None, None, None)
            # The server is down: writes land in its store, not on the socket.
            await fake.write({"n": 2})
            await fake.write({"n": 3})
            async with fake.running(port):
                seen += await take(watch, 2)
                await fake.write({"n": 4})
                seen += await take(watch, 1)
    finally:
        await first.__aexit__(None, None, None)
    assert revs(seen) == [2, 3, 4, 5]


async def test_a_watch_says_whether_it_is_connected_and_reconnects_are_warned(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="oada_jobs.client")
    fake = FakeOADA()
    first = fake.running()
    await first.__aenter__()
    port = fake.port
    try:
        async with client(fake, max_backoff=0.1) as oada, oada.watch("/bookmarks/r") as watch:
            assert watch.connected
            await first.__aexit__(None, None, None)
            with anyio.fail_after(10):
                while watch.connected:
                    await anyio.sleep(0.01)
                # Every failed attempt to reconnect is a warning, not silence.
                while sum("reconnecting to" in r.getMessage() for r in caplog.records) < 2:
                    await anyio.sleep(0.01)
            assert not watch.connected
            async with fake.running(port):
                with anyio.fail_after(10):
                    while not watch.connected:
                        await anyio.sleep(0.01)
                await fake.write({"n": 1})
                assert revs(await take(watch, 1)) == [2]
        assert not watch.connected
    finally:
        await first.__aexit__(None, None, None)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("dropped" in r.getMessage() for r in warnings)
    attempts = [r.getMessage() for r in warnings if "reconnecting to" in r.getMessage()]
    assert "attempt 1 failed" in attempts[0]
    assert "next attempt in" in attempts[0]
    assert "restored the watch on /bookmarks/r" in caplog.text
    assert all(TOKEN not in r.getMessage() for r in caplog.records)


async def test_watch_that_cannot_be_restored_raises_watch_lost() -> None:
    fake = FakeOADA()
    server = fake.running()
    await server.__aenter__()
    async with (
        client(fake, connect_timeout=0.5) as oada,
        oada.watch("/bookmarks/r", deadline=0.3) as watch,
    ):
        await server.__aexit__(None, None, None)
        with anyio.fail_after(10), pytest.raises(WatchLost, match=r"within 0\.3s"):
            async for _ in watch:
                pass


async def test_in_flight_write_fails_but_a_read_is_retried_after_a_drop() -> None:
    fake = FakeOADA()
    async with fake.running(), client(fake) as oada:
        fake.hold = {"put"}

        async def cut() -> None:
            await fake.held.wait()
            await fake.drop()

        async with anyio.create_task_group() as group:
            group.start_soon(cut)
            with pytest.raises(OADATransportError, match="closed before the answer"):
                await oada.put("/bookmarks/r", {"a": 1})
        fake.hold = {"get"}
        fake.held = anyio.Event()
        async with anyio.create_task_group() as group:

            async def cut_then_serve() -> None:
                await fake.held.wait()
                fake.hold = set()
                await fake.drop()

            group.start_soon(cut_then_serve)
            response = await oada.get("/bookmarks/r")
        assert response.status == 200


async def test_whole_resource_delete_is_delivered_then_ends_the_watch() -> None:
    fake = FakeOADA()
    async with fake.running(), client(fake) as oada, oada.watch("/bookmarks/r") as watch:
        await fake.write({"a": 1})
        await fake.delete_resource()
        changes = await take(watch, 5)
    assert [change.type for change in changes] == ["merge", "delete"]
    assert changes[1].body is None
    assert changes[1].rev == 0


async def test_revoked_clone_ends_its_watches_and_refuses_new_ones() -> None:
    fake = FakeOADA()
    async with fake.running(), client(fake) as oada:
        scoped = oada.clone("job-token")
        async with scoped.watch("/bookmarks/r") as watch, oada.watch("/bookmarks/r") as parent:
            await fake.write({"a": 1})
            assert revs(await take(watch, 1)) == [2]
            scoped.revoke()
            with anyio.fail_after(5), pytest.raises(ClientClosed, match="revoked"):
                await take(watch, 1)
            # The parent's watch on the same socket is unaffected.
            await fake.write({"a": 2})
            assert revs(await take(parent, 2)) == [2, 3]
        with pytest.raises(ClientClosed):
            async with scoped.watch("/bookmarks/r"):
                pass


async def test_closing_the_client_ends_watches() -> None:
    fake = FakeOADA()
    async with fake.running():
        oada = client(fake)
        async with oada:
            watch = oada.watch("/bookmarks/r")
            await watch.__aenter__()
        with pytest.raises(ClientClosed):
            await take(watch, 1)
        await watch.aclose()


async def test_a_request_without_an_answer_times_out_and_is_not_repeated() -> None:
    fake = FakeOADA()
    fake.hold = {"get"}
    async with fake.running(), client(fake, timeout=0.2) as oada:
        with pytest.raises(OADATimeout, match=r"no answer within 0\.2s"):
            await oada.get("/bookmarks/r")
        fake.hold = set()
        assert (await oada.head("/bookmarks/r")).status == 200
    assert [m["method"] for m in fake.received].count("get") == 1


async def test_a_request_its_caller_gave_up_on_leaves_the_socket_working() -> None:
    fake = FakeOADA()
    fake.hold = {"get"}
    async with fake.running(), client(fake) as oada:
        with anyio.move_on_after(0.1) as scope:
            await oada.get("/bookmarks/r")
        assert scope.cancelled_caught
        fake.hold = set()
        assert (await oada.head("/bookmarks/r")).status == 200
        assert (await oada.get("/bookmarks/r")).data == {"_id": RID, "_rev": 1}
    assert fake.connects == 1


async def test_auto_falls_back_to_http_without_a_websocket() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing listens there: the probe fails, so requests go over HTTP (and
    # fail there as transport errors after their retries).
    async with OADAClient(
        f"http://127.0.0.1:{port}", TOKEN, retries=1, max_backoff=0.01, connect_timeout=1
    ) as oada:
        assert oada.connection == "http"
        with pytest.raises(OADATransportError, match="could not connect"):
            await oada.get("/bookmarks")


async def test_two_watches_on_one_resource_each_get_a_shared_notification_once() -> None:
    fake = FakeOADA()
    async with (
        fake.running(),
        client(fake) as oada,
        oada.watch("/bookmarks/r") as first,
        oada.watch("/bookmarks/r", type="tree") as second,
    ):
        await fake.write({"a": 1})
        await fake.write({"a": 2})
        singles = await take(first, 2)
        arrays = await take(second, 2)
    assert revs(singles) == [2, 3]
    assert [revs(array) for array in arrays] == [[2], [3]]
