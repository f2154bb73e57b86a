"""Requests over HTTP against httpx.MockTransport: answers, errors, retries, secrets."""

from __future__ import annotations

import json
import logging
from typing import Any

import anyio
import httpx
import pytest
from client_helpers import TOKEN, json_response, mock_client

from oada_jobs.exceptions import (
    BadRequest,
    ClientClosed,
    Forbidden,
    NotFound,
    OADAStatusError,
    OADATimeout,
    OADATransportError,
    PreconditionFailed,
    ServerError,
    TooManyRequests,
    Unauthorized,
    UnprocessableEntity,
)

WRITE_HEADERS = {
    "content-location": "/resources/K1/a",
    "x-oada-path-leftover": "/a",
    "x-oada-rev": "7",
    "etag": '"K1/7"',
}


async def test_get_returns_body_and_oada_headers() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return json_response(
            200,
            {"a": 1, "_rev": 7},
            **{"content-type": "application/vnd.oada.x.1+json", **WRITE_HEADERS},
        )

    async with mock_client(handler) as oada:
        response = await oada.get("/bookmarks/a")
    assert response.status == 200
    assert response.data == {"a": 1, "_rev": 7}
    assert response.rev == 7
    assert response.etag == '"K1/7"'
    assert response.content_location == "/resources/K1/a"
    assert response.resource_id == "resources/K1"
    assert response.path_leftover == "/a"
    assert seen[0].headers["authorization"] == f"Bearer {TOKEN}"
    assert seen[0].url.path == "/bookmarks/a"


async def test_put_sends_json_with_content_type_and_if_match() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, headers=WRITE_HEADERS)

    async with mock_client(handler) as oada:
        response = await oada.put("/bookmarks/a", {"b": [1, "ü"]}, if_match='"K1/6"')
        await oada.put("/bookmarks/t", {"_type": "application/vnd.x.1+json"})
        await oada.put("/bookmarks/e", {"x": 1}, content_type="application/vnd.explicit+json")
        await oada.post("/bookmarks/list", {"x": 1}, headers={"X-Custom": "yes"})
        await oada.put("/bookmarks/bin", b"\x00\x01")
    assert response.status == 201
    assert response.data is None
    assert response.rev == 7
    put, typed, explicit, post, binary = seen
    assert json.loads(put.content) == {"b": [1, "ü"]}
    assert put.headers["content-type"] == "application/json"
    assert put.headers["if-match"] == '"K1/6"'
    assert typed.headers["content-type"] == "application/vnd.x.1+json"
    assert explicit.headers["content-type"] == "application/vnd.explicit+json"
    assert post.method == "POST"
    assert post.headers["x-custom"] == "yes"
    assert binary.content == b"\x00\x01"
    assert binary.headers["content-type"] == "application/octet-stream"


async def test_delete_and_head() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.method)
        if request.method == "HEAD":
            return httpx.Response(200, headers={"etag": '"K/3"', "x-oada-rev": "3"})
        return httpx.Response(204, headers={"x-oada-rev": "4"})

    async with mock_client(handler) as oada:
        head = await oada.head("/bookmarks/x")
        deleted = await oada.delete("/bookmarks/x", if_match=head.etag)
    assert seen == ["HEAD", "DELETE"]
    assert head.etag == '"K/3"'
    assert head.data is None
    assert deleted.status == 204
    assert deleted.rev == 4


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, BadRequest),
        (401, Unauthorized),
        (403, Forbidden),
        (404, NotFound),
        (412, PreconditionFailed),
        (422, UnprocessableEntity),
        (418, OADAStatusError),
    ],
)
async def test_status_errors_map_to_classes_with_the_body_message(
    status: int, cls: type[OADAStatusError]
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return json_response(status, {"statusCode": status, "message": "the server's words"})

    async with mock_client(handler) as oada:
        with pytest.raises(cls) as info:
            await oada.put("/bookmarks/x", {"a": 1})
    error = info.value
    assert type(error) is cls
    assert error.status == status
    assert error.message == "the server's words"
    assert error.method == "put"
    assert error.path == "/bookmarks/x"
    assert error.body == {"statusCode": status, "message": "the server's words"}
    assert str(error) == "PUT /bookmarks/x: the server's words"


async def test_error_without_message_uses_status_line() -> None:
    async with mock_client(lambda request: httpx.Response(404)) as oada:
        with pytest.raises(NotFound, match="404 Not Found"):
            await oada.get("/bookmarks/nope")


async def test_token_never_appears_in_errors_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    def handler(request: httpx.Request) -> httpx.Response:
        # A careless server echoing the credential back must not leak it.
        echoed = request.headers["authorization"]
        bare = echoed.split()[-1]
        return json_response(401, {"message": f"bad token {bare} in {echoed}"})

    async with mock_client(handler) as oada:
        with pytest.raises(Unauthorized) as info:
            await oada.get("/bookmarks")
        with pytest.raises(Unauthorized) as clone_info:
            await oada.clone("another-secret").get("/bookmarks")

    for error in (info.value, clone_info.value):
        for text in (str(error), repr(error), error.message):
            assert TOKEN not in text
            assert "another-secret" not in text
    assert TOKEN not in caplog.text


async def test_transport_errors_and_timeouts_do_not_leak_the_token() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"refused {request.headers['authorization']}")

    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("too slow")

    async with mock_client(refuse, retries=1) as oada:
        with pytest.raises(OADATransportError) as info:
            await oada.get("/bookmarks")
    assert TOKEN not in str(info.value)
    assert TOKEN not in repr(info.value)
    async with mock_client(slow) as oada:
        with pytest.raises(OADATimeout):
            await oada.get("/bookmarks")


class Script:
    """Answers with a scripted sequence and counts calls."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.calls = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        assert isinstance(answer, httpx.Response)
        return answer


def ok() -> httpx.Response:
    return httpx.Response(201 if False else 200, headers={"x-oada-rev": "1"})


@pytest.mark.parametrize("method", ["get", "head", "put", "delete", "post"])
async def test_connect_errors_are_retried_for_every_method(method: str) -> None:
    script = Script(httpx.ConnectError("refused"), httpx.ConnectError("refused"), ok())
    async with mock_client(script) as oada:
        response = await _call(oada, method)
    assert response.status == 200
    assert script.calls == 3


@pytest.mark.parametrize(
    ("method", "retried"),
    [("get", True), ("head", True), ("put", False), ("delete", False), ("post", False)],
)
async def test_broken_connection_after_sending_is_retried_only_for_reads(
    method: str, retried: bool
) -> None:
    script = Script(httpx.ReadError("reset by peer"), ok())
    async with mock_client(script) as oada:
        if retried:
            assert (await _call(oada, method)).status == 200
        else:
            with pytest.raises(OADATransportError, match="connection failed"):
                await _call(oada, method)
    assert script.calls == (2 if retried else 1)


@pytest.mark.parametrize(
    ("method", "retried"),
    [("get", True), ("head", True), ("put", False), ("delete", False), ("post", False)],
)
async def test_500_is_retried_only_for_reads(method: str, retried: bool) -> None:
    script = Script(httpx.Response(500), ok())
    async with mock_client(script) as oada:
        if retried:
            assert (await _call(oada, method)).status == 200
        else:
            with pytest.raises(ServerError):
                await _call(oada, method)
    assert script.calls == (2 if retried else 1)


@pytest.mark.parametrize("method", ["get", "put", "delete", "post"])
async def test_429_and_503_with_retry_after_are_retried(method: str) -> None:
    script = Script(
        httpx.Response(429, headers={"retry-after": "0"}),
        httpx.Response(503, headers={"retry-after": "0.01"}),
        ok(),
    )
    async with mock_client(script) as oada:
        assert (await _call(oada, method)).status == 200
    assert script.calls == 3


async def test_post_503_without_retry_after_is_not_repeated() -> None:
    script = Script(httpx.Response(503), ok())
    async with mock_client(script) as oada:
        with pytest.raises(ServerError):
            await oada.post("/bookmarks/list", {"a": 1})
    assert script.calls == 1


async def test_retry_after_is_honoured_up_to_the_cap() -> None:
    script = Script(httpx.Response(429, headers={"retry-after": "3600"}), ok())
    async with mock_client(script, max_retry_after=0.01) as oada:
        with anyio.fail_after(5):
            assert (await oada.get("/bookmarks")).status == 200
    assert script.calls == 2


async def test_retries_give_up_with_the_last_error() -> None:
    script = Script(httpx.Response(429, headers={"retry-after": "0"}))
    async with mock_client(script, retries=3) as oada:
        with pytest.raises(TooManyRequests) as info:
            await oada.get("/bookmarks")
    assert info.value.retry_after == 0
    assert script.calls == 4
    script = Script(httpx.Response(502))
    async with mock_client(script, retries=0) as oada:
        with pytest.raises(ServerError):
            await oada.get("/bookmarks")
    assert script.calls == 1


async def test_concurrency_limit_is_shared_with_clones() -> None:
    in_flight = 0
    peak = 0
    release = anyio.Event()
    arrived = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak, arrived
        in_flight += 1
        arrived += 1
        peak = max(peak, in_flight)
        await release.wait()
        in_flight -= 1
        return ok()

    async with mock_client(handler, concurrency=2) as oada:
        clone = oada.clone("other-token")
        async with anyio.create_task_group() as group:
            for client in (oada, clone, oada, clone, oada):
                group.start_soon(client.get, "/bookmarks")
            with anyio.fail_after(5):
                while arrived < 2:
                    await anyio.wait_all_tasks_blocked()
            assert in_flight == 2
            release.set()
    assert peak == 2
    assert arrived == 5


async def test_clone_uses_its_token_and_revoke_refuses_further_requests() -> None:
    tokens: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        tokens.append(request.headers["authorization"])
        return ok()

    async with mock_client(handler) as oada:
        scoped = oada.clone("job-token")
        same = oada.clone()
        await scoped.get("/bookmarks")
        await same.get("/bookmarks")
        scoped.revoke()
        scoped.revoke()  # idempotent
        with pytest.raises(ClientClosed, match="revoked"):
            await scoped.put("/bookmarks/late", {"a": 1})
        async with oada.clone("ctx-token") as ctx:
            await ctx.get("/bookmarks")
        with pytest.raises(ClientClosed):
            await ctx.get("/bookmarks")
        await same.aclose()
        # The parent and its connections are untouched.
        await oada.get("/bookmarks")
    assert tokens == ["Bearer job-token", f"Bearer {TOKEN}", "Bearer ctx-token", f"Bearer {TOKEN}"]


async def test_revoke_refuses_a_request_still_waiting_for_a_slot() -> None:
    release = anyio.Event()
    sent: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request.headers["authorization"])
        await release.wait()
        return ok()

    async with mock_client(handler, concurrency=1) as oada:
        scoped = oada.clone("job-token")
        outcome: list[BaseException] = []

        async def late_write() -> None:
            try:
                await scoped.put("/bookmarks/late", {"a": 1})
            except ClientClosed as error:
                outcome.append(error)

        async with anyio.create_task_group() as group:
            group.start_soon(oada.get, "/bookmarks")
            await anyio.wait_all_tasks_blocked()
            group.start_soon(late_write)
            await anyio.wait_all_tasks_blocked()
            scoped.revoke()
            release.set()
    assert sent == [f"Bearer {TOKEN}"]
    assert len(outcome) == 1


async def _call(oada: Any, method: str) -> Any:
    if method in ("put", "post"):
        return await getattr(oada, method)("/bookmarks/x", {"a": 1})
    return await getattr(oada, method)("/bookmarks/x")
