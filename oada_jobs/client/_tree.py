"""OADA trees: content-type choice, tree PUT (create and link missing resources), tree GET.

A tree is nested keys with ``"*"`` for any key. A node with ``_type`` is a
resource boundary; one that also has ``_rev`` is linked from its parent with a
versioned link; ``_require: true`` forbids creating it.

Owns tree walks; requests go through the :class:`Send` callable it is given,
so it must not import ``_client`` (nor the framework or the server).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from typing import Any, Protocol

import anyio

from .._ksuid import ksuid
from .._retry import retry
from ..exceptions import Forbidden, NotFound, OADAError, PreconditionFailed, UnprocessableEntity
from ._response import Response

__all__ = [
    "choose_content_type",
    "ensure_tree",
    "path_exists",
    "split_path",
    "tree_get",
    "tree_node",
    "tree_put",
]

logger = logging.getLogger("oada_jobs.client")

#: How often a tree PUT re-walks the tree after losing a race (412/422).
TREE_PUT_TRIES = 5
#: Back-off unit in seconds between those tries: ``unit * ((n + 1)**2 + random())``.
TREE_PUT_BACKOFF = 0.1


class Send(Protocol):
    """One request on the client's request path (retries, auth, concurrency limit)."""

    async def __call__(
        self,
        method: str,
        path: str,
        *,
        data: Any = None,
        content_type: str | None = None,
        headers: Mapping[str, str] | None = None,
        if_match: str | None = None,
    ) -> Response: ...


def _lost_race_delay(error: BaseException, retry: int) -> float:
    return TREE_PUT_BACKOFF * (retry**2 + random.random())


def split_path(path: str) -> list[str]:
    return [segment for segment in path.split("/") if segment]


def tree_node(tree: Mapping[str, Any], segments: list[str]) -> Mapping[str, Any] | None:
    """The tree node describing *segments*, or ``None`` when the tree does not reach it."""
    node: Any = tree
    for segment in segments:
        if not isinstance(node, Mapping):
            return None
        if segment in node and isinstance(node[segment], Mapping):
            node = node[segment]
        elif isinstance(node.get("*"), Mapping):
            node = node["*"]
        else:
            return None
    return node if isinstance(node, Mapping) else None


def choose_content_type(
    path: str, data: Any, content_type: str | None, tree: Mapping[str, Any] | None
) -> str:
    """Pick a write's Content-Type the way the reference client does.

    In order: the explicit *content_type*; ``application/octet-stream`` for
    bytes; ``data["_type"]``; the ``_type`` of the tree node at *path*
    (:class:`ValueError` if the tree does not describe *path*);
    ``application/json``.
    """
    if content_type:
        return content_type
    if isinstance(data, bytes | bytearray | memoryview):
        return "application/octet-stream"
    if isinstance(data, Mapping) and isinstance(data.get("_type"), str) and data["_type"]:
        return str(data["_type"])
    if tree is not None:
        node = tree_node(tree, split_path(path))
        if node is None:
            raise ValueError(f"expected the tree to describe {path}, but it does not reach it")
        node_type = node.get("_type")
        if isinstance(node_type, str) and node_type:
            return node_type
    return "application/json"


async def path_exists(send: Send, path: str) -> tuple[bool, Response | None]:
    """HEAD *path*: ``(True, response)`` when it exists, ``(False, None)`` when missing.

    404 means missing; so does 403 on a ``/resources/...`` path, which older
    servers answer for resources that do not exist. Other errors propagate.
    """
    try:
        return True, await send("head", path)
    except NotFound:
        return False, None
    except Forbidden:
        if split_path(path)[:1] == ["resources"]:
            return False, None
        raise


def _nest(keys: list[str], value: Any) -> Any:
    for key in reversed(keys):
        value = {key: value}
    return value


async def ensure_tree(send: Send, path: str, tree: Mapping[str, Any]) -> None:
    """Create and link every missing resource the tree puts on *path*.

    Walks the prefixes of *path* from longest to shortest. Each missing
    resource boundary is created as ``/resources/<ksuid>`` (holding the link
    to the one below it); the first existing one gets the link with
    ``If-Match`` on the ETag just read, so a concurrent writer makes this
    fail with 412 instead of being overwritten.
    """
    segments = split_path(path)
    link: dict[str, Any] | None = None
    link_segments: list[str] = []
    for end in range(len(segments), 0, -1):
        prefix = segments[:end]
        node = tree_node(tree, prefix)
        if node is None or not isinstance(node.get("_type"), str):
            continue
        prefix_path = "/" + "/".join(prefix)
        if prefix == ["resources"]:
            exists, head = True, None
        else:
            exists, head = await path_exists(send, prefix_path)
        if exists:
            if link is not None:
                await send(
                    "put",
                    "/" + "/".join(link_segments),
                    data=link,
                    content_type=node["_type"],
                    if_match=head.etag if head is not None else None,
                )
            return
        if node.get("_require"):
            raise NotFound(
                f"{prefix_path} does not exist and the tree marks it _require",
                method="put",
                path=path,
                status=404,
            )
        body = {} if link is None else _nest(link_segments[end:], link)
        resource_id = f"resources/{ksuid()}"
        await send("put", f"/{resource_id}", data=body, content_type=node["_type"])
        link = {"_id": resource_id, "_rev": 0} if "_rev" in node else {"_id": resource_id}
        link_segments = prefix


async def tree_put(
    send: Send,
    path: str,
    data: Any,
    tree: Mapping[str, Any],
    *,
    content_type: str | None,
    headers: Mapping[str, str] | None,
    if_match: str | None,
) -> Response:
    """:func:`ensure_tree` (retried after lost races), then the PUT itself."""
    # Fail on a path the tree does not describe before writing anything.
    chosen = choose_content_type(path, data, content_type, tree)
    await retry(
        lambda: ensure_tree(send, path, tree),
        # Someone else linked the same place first; back off and re-walk.
        retryable=lambda error: isinstance(error, PreconditionFailed | UnprocessableEntity),
        delay=_lost_race_delay,
        retries=TREE_PUT_TRIES - 1,
    )
    return await send(
        "put", path, data=data, content_type=chosen, headers=headers, if_match=if_match
    )


async def tree_get(
    send: Send, path: str, tree: Mapping[str, Any], *, headers: Mapping[str, str] | None
) -> Response:
    """GET *path*, then splice in every linked resource the tree names below it."""
    node = tree_node(tree, split_path(path))
    if node is None:
        raise ValueError(f"expected the tree to describe {path}, but it does not reach it")
    response = await send("get", path, headers=headers)
    await _fill(send, path, node, response.data, headers)
    return response


def _children(node: Mapping[str, Any], data: dict[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    children = []
    wildcard = node.get("*")
    for key, value in data.items():
        if key.startswith("_") or not isinstance(value, dict):
            continue
        child = node.get(key)
        if not isinstance(child, Mapping):
            child = wildcard
        if isinstance(child, Mapping):
            children.append((key, child))
    return children


async def _fill(
    send: Send,
    path: str,
    node: Mapping[str, Any],
    data: Any,
    headers: Mapping[str, str] | None,
) -> None:
    if not isinstance(data, dict):
        return
    children = _children(node, data)
    if not children:
        return
    async with anyio.create_task_group() as group:
        for key, child in children:
            child_path = f"{path.rstrip('/')}/{key}"
            if isinstance(child.get("_type"), str):
                group.start_soon(_fetch_child, send, child_path, child, data, key, headers)
            else:
                group.start_soon(_fill, send, child_path, child, data[key], headers)


async def _fetch_child(
    send: Send,
    path: str,
    node: Mapping[str, Any],
    parent: dict[str, Any],
    key: str,
    headers: Mapping[str, str] | None,
) -> None:
    try:
        response = await send("get", path, headers=headers)
    except OADAError as error:
        # One unreadable child must not cost the rest of the tree.
        logger.warning("tree GET skipped %s: %s", path, error)
        return
    parent[key] = response.data
    await _fill(send, path, node, response.data, headers)
