"""Tree PUT, tree GET, ensure and post-with-tree, checked request by request."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from client_helpers import json_response, mock_client

from oada_jobs.exceptions import Forbidden, NotFound, PreconditionFailed

BM = "application/vnd.oada.bookmarks.1+json"
S = "application/vnd.oada.services.1+json"
SV = "application/vnd.oada.service.1+json"
J = "application/vnd.oada.service.jobs.1+json"

TREE = {
    "bookmarks": {
        "_type": BM,
        "services": {
            "_type": S,
            "_rev": 0,
            "*": {"_type": SV, "_rev": 0, "jobs": {"_type": J, "pending": {"_type": J, "*": {}}}},
        },
    }
}


class FakeServer:
    """Knows which paths exist; records (method, path, content-type, if-match, body)."""

    def __init__(self, existing: dict[str, str], *, fail_link_puts: int = 0) -> None:
        self.existing = existing  # path -> etag
        self.log: list[tuple[str, str, str | None, str | None, Any]] = []
        self.fail_link_puts = fail_link_puts

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        body = json.loads(request.content) if request.content else None
        self.log.append(
            (
                request.method,
                path,
                request.headers.get("content-type"),
                request.headers.get("if-match"),
                body,
            )
        )
        if request.method == "HEAD":
            if path in self.existing:
                return httpx.Response(200, headers={"etag": self.existing[path]})
            return httpx.Response(404)
        if request.method == "PUT":
            if request.headers.get("if-match") and self.fail_link_puts:
                self.fail_link_puts -= 1
                return json_response(412, {"message": "If-Match header does not match"})
            self.existing.setdefault(path, '"X/1"')
            return httpx.Response(201, headers={"content-location": path, "x-oada-rev": "1"})
        raise AssertionError(f"unexpected {request.method}")


def ids(log: list[Any]) -> dict[str, str]:
    """Map the client-chosen resource ids to k1, k2, ... in creation order."""
    names: dict[str, str] = {}
    for method, path, *_ in log:
        if method == "PUT" and path.startswith("/resources/"):
            names[path.removeprefix("/")] = f"resources/k{len(names) + 1}"
    return names


def normalise(log: list[Any]) -> list[Any]:
    text = json.dumps(log)
    for real, short in ids(log).items():
        text = text.replace(real, short)
    return [tuple(entry) for entry in json.loads(text)]


async def test_tree_put_creates_and_links_missing_resources_in_order() -> None:
    server = FakeServer({"/bookmarks": '"BM/1"', "/bookmarks/services": '"S/4"'})
    async with mock_client(server) as oada:
        response = await oada.put("/bookmarks/services/svc1/jobs/pending", {}, tree=TREE)
    assert response.status == 201
    assert normalise(server.log) == [
        ("HEAD", "/bookmarks/services/svc1/jobs/pending", None, None, None),
        ("PUT", "/resources/k1", J, None, {}),
        ("HEAD", "/bookmarks/services/svc1/jobs", None, None, None),
        ("PUT", "/resources/k2", J, None, {"pending": {"_id": "resources/k1"}}),
        ("HEAD", "/bookmarks/services/svc1", None, None, None),
        ("PUT", "/resources/k3", SV, None, {"jobs": {"_id": "resources/k2"}}),
        ("HEAD", "/bookmarks/services", None, None, None),
        ("PUT", "/bookmarks/services/svc1", S, '"S/4"', {"_id": "resources/k3", "_rev": 0}),
        ("PUT", "/bookmarks/services/svc1/jobs/pending", J, None, {}),
    ]
    # Client ids are KSUIDs: 27 base62 characters.
    assert all(len(real.split("/")[1]) == 27 for real in ids(server.log))


async def test_tree_put_on_existing_path_only_heads_then_writes() -> None:
    server = FakeServer({"/bookmarks/services/svc1/jobs/pending": '"P/2"'})
    async with mock_client(server) as oada:
        await oada.put("/bookmarks/services/svc1/jobs/pending/x", {"a": 1}, tree=TREE)
    assert [entry[:2] for entry in server.log] == [
        ("HEAD", "/bookmarks/services/svc1/jobs/pending"),
        ("PUT", "/bookmarks/services/svc1/jobs/pending/x"),
    ]
    # The node at .../x has no _type, so the content type is the default.
    assert server.log[-1][2] == "application/json"


async def test_tree_put_retries_after_losing_the_link_race() -> None:
    server = FakeServer({"/bookmarks": '"BM/1"', "/bookmarks/services": '"S/4"'}, fail_link_puts=1)
    async with mock_client(server) as oada:
        await oada.put("/bookmarks/services/svc1", {"a": 1}, tree=TREE)
    link_puts = [entry for entry in server.log if entry[3]]
    assert len(link_puts) == 2  # the 412, then the retry that won
    assert server.log[-1][:2] == ("PUT", "/bookmarks/services/svc1")


async def test_tree_put_gives_up_after_five_lost_races(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("oada_jobs.client._tree.TREE_PUT_BACKOFF", 0.001)
    server = FakeServer({"/bookmarks": '"BM/1"'}, fail_link_puts=99)
    server.existing.pop("/bookmarks/services", None)
    async with mock_client(server) as oada:
        with pytest.raises(PreconditionFailed):
            await oada.put("/bookmarks/services", {"a": 1}, tree=TREE)
    assert len([entry for entry in server.log if entry[3]]) == 5


async def test_require_forbids_creating_a_node() -> None:
    tree = {"bookmarks": {"_type": BM, "x": {"_type": J, "_require": True}}}
    server = FakeServer({"/bookmarks": '"BM/1"'})
    async with mock_client(server) as oada:
        with pytest.raises(NotFound, match="_require"):
            await oada.put("/bookmarks/x", {"a": 1}, tree=tree)
    assert all(method == "HEAD" for method, *_ in server.log)


async def test_path_outside_the_tree_is_refused_before_any_request() -> None:
    server = FakeServer({})
    async with mock_client(server) as oada:
        with pytest.raises(ValueError, match="does not reach"):
            await oada.put("/elsewhere/x", {"a": 1}, tree=TREE)
        with pytest.raises(ValueError, match="does not reach"):
            await oada.get("/elsewhere/x", tree=TREE)
    assert server.log == []


async def test_403_on_a_missing_resources_path_counts_as_missing() -> None:
    tree = {"resources": {"*": {"_type": J, "a": {"_type": J, "_rev": 0}}}}
    calls: list[tuple[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append((request.method, request.url.path))
        if request.method == "HEAD":
            return httpx.Response(403)
        return httpx.Response(201)

    async with mock_client(handler) as oada:
        await oada.put("/resources/abc/a", {"x": 1}, tree=tree)
    assert [c for c in calls if c[0] == "HEAD"] == [
        ("HEAD", "/resources/abc/a"),
        ("HEAD", "/resources/abc"),
    ]
    # 403 elsewhere is a real permission error.
    async with mock_client(lambda r: httpx.Response(403)) as oada:
        with pytest.raises(Forbidden):
            await oada.put("/bookmarks/services", {}, tree=TREE)


async def test_ensure_writes_only_when_missing() -> None:
    server = FakeServer({"/bookmarks": '"BM/1"', "/bookmarks/services": '"S/4"'})
    async with mock_client(server) as oada:
        existing = await oada.ensure("/bookmarks/services", {}, tree=TREE)
        assert existing.etag == '"S/4"'
        assert [entry[0] for entry in server.log] == ["HEAD"]
        await oada.ensure("/bookmarks/services/new", {}, tree=TREE)
    assert server.log[-1][:2] == ("PUT", "/bookmarks/services/new")


async def test_post_with_tree_puts_at_a_new_ksuid_key() -> None:
    server = FakeServer({"/bookmarks/services/s/jobs/pending": '"P/1"'})
    async with mock_client(server) as oada:
        first = await oada.post("/bookmarks/services/s/jobs/pending", {"a": 1}, tree=TREE)
        second = await oada.post("/bookmarks/services/s/jobs/pending", {"a": 2}, tree=TREE)
    keys = [
        location.rsplit("/", 1)[1]
        for location in (first.content_location, second.content_location)
        if location
    ]
    assert len(keys) == 2
    assert all(len(key) == 27 for key in keys)
    assert keys[0] < keys[1]


async def test_create_resource_posts_and_returns_the_id() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, headers={"content-location": "/resources/NEW"})

    async with mock_client(handler) as oada:
        rid = await oada.create_resource({"a": 1}, content_type=J)
    assert rid == "resources/NEW"
    assert (seen[0].method, seen[0].url.path, seen[0].headers["content-type"]) == (
        "POST",
        "/resources",
        J,
    )


async def test_tree_get_splices_linked_resources() -> None:
    docs = {
        "/bookmarks/services": {
            "_id": "resources/S",
            "svc1": {"_id": "resources/A", "_rev": 2},
            "svc2": {"_id": "resources/B", "_rev": 1},
            "note": "x",
        },
        "/bookmarks/services/svc1": {
            "_id": "resources/A",
            "jobs": {"_id": "resources/J", "_rev": 3},
        },
        "/bookmarks/services/svc1/jobs": {"_id": "resources/J", "pending": {"_id": "resources/P"}},
        "/bookmarks/services/svc1/jobs/pending": {"_id": "resources/P", "k": 1},
    }
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        if request.url.path in docs:
            return json_response(200, docs[request.url.path])
        return json_response(404, {"message": "gone"})

    async with mock_client(handler) as oada:
        response = await oada.get("/bookmarks/services", tree=TREE)
    data = response.data
    assert data["svc1"]["jobs"]["pending"] == {"_id": "resources/P", "k": 1}
    # svc2 failed (404): logged, skipped, left as the link.
    assert data["svc2"] == {"_id": "resources/B", "_rev": 1}
    assert data["note"] == "x"
    assert sorted(seen) == sorted([*docs, "/bookmarks/services/svc2"])
