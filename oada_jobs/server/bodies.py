"""What a write's body must be: checks made before anything changes.

A JSON body is refused (with the status and a message saying what was
expected) when its root is not an object, it nests deeper than
``max_depth``, its ``_id``, ``_meta`` or ``_type`` do not fit, or it would
merge into bytes or into an array element by element. The links in it are
collected on the way.

Owns the checks of a body; must not change a document, nor import the
framework, the client or a transport.
"""

from __future__ import annotations

from typing import Any

from oada_jobs.server.documents import is_json_type, is_link_position, nest
from oada_jobs.server.edge import Reject
from oada_jobs.server.store import Path, Resource, pointer

__all__ = ["refuse_inside_array", "refuse_into_bytes", "validate_body"]


def refuse_into_bytes(res: Resource, path: Path, headers: dict[str, str]) -> None:
    """Raise :class:`Reject` (409) for a JSON merge into a resource holding bytes.

    Its content is its bytes: a merge would be acknowledged with a new
    rev and never be readable (GET answers the bytes, sub-paths 404).
    Its ``_meta`` takes JSON as any resource's does.
    """
    if res.data is None or is_json_type(res.type or "application/json"):
        return
    if path and path[0] == "_meta":
        return
    raise Reject(
        409,
        f"{res.id} holds {res.type} bytes, which JSON cannot be merged into;"
        f" PUT a {res.type} body at its root to replace them, or DELETE it first",
        headers,
    )


def refuse_inside_array(res: Resource, path: Path, action: str, headers: dict[str, str]) -> None:
    """Raise :class:`Reject` (409) if *path* in *res* goes into an existing array.

    A merge can only name object keys: written as nested objects, a
    write at ``list/0`` would turn the array into an object with a key
    ``"0"``, and an element cannot be removed as a key. Such writes and
    deletes are refused; the whole array is written instead.
    """
    node: Any = res.doc
    for i, key in enumerate(path):
        if isinstance(node, list):
            raise Reject(
                409,
                f"{pointer(path)} in {res.id} is inside the array at {pointer(path[:i])},"
                f" and array elements cannot be {action} one by one;"
                " PUT the whole array instead",
                headers,
            )
        if not isinstance(node, dict) or key not in node:
            return
        node = node[key]


def validate_body(
    resource_id: str,
    path: Path,
    value: Any,
    found: list[tuple[Path, dict[str, Any]]],
    headers: dict[str, str],
    max_depth: int,
) -> None:
    """Raise :class:`Reject` for a JSON *value* that cannot be written at *path* in *resource_id*.

    The root must be an object; *value* may nest *max_depth* levels counting
    *path*; its ``_id``, ``_meta`` and ``_type`` must fit the resource. The
    links found in it are added to *found*, with their paths.
    """
    if not path and not isinstance(value, dict):
        raise Reject(
            400,
            f"expected a JSON object at the root of {resource_id},"
            f" got {type(value).__name__ if value is not None else 'null'}",
            headers,
        )
    budget = max_depth - len(path)
    if budget < 1 or not _scan(value, path, budget, found):
        raise Reject(
            400,
            f"the body is nested more than {max_depth} levels deep"
            " (counting the path inside the resource)",
            headers,
        )
    root = nest(path, value)
    if isinstance(root, dict):
        ident = root.get("_id", resource_id)
        if ident != resource_id:
            raise Reject(
                422,
                f"the body's _id {ident!r} does not match the resource written to,"
                f" {resource_id!r}; to repoint a link, DELETE it first",
                headers,
            )
        meta = root.get("_meta", {})
        if not isinstance(meta, dict):
            raise Reject(400, "_meta must be an object", headers)
        kind = root.get("_type", "")
        if not isinstance(kind, str):
            raise Reject(400, "_type must be a string", headers)


def _scan(value: Any, path: Path, budget: int, found: list[tuple[Path, dict[str, Any]]]) -> bool:
    """Check nesting depth and collect links; False when too deep."""
    if budget < 1:
        return False
    if isinstance(value, dict):
        if isinstance(value.get("_id"), str) and is_link_position(path):
            found.append((path, value))
            return all(
                _depth_ok(v, budget - 1) for v in value.values() if isinstance(v, (dict, list))
            )
        for k, v in value.items():
            if isinstance(v, (dict, list)) and not _scan(v, (*path, k), budget - 1, found):
                return False
        return True
    if isinstance(value, list):
        return all(_depth_ok(v, budget - 1) for v in value if isinstance(v, (dict, list)))
    return True


def _depth_ok(value: Any, budget: int) -> bool:
    if budget < 1:
        return False
    children = value.values() if isinstance(value, dict) else value
    return all(_depth_ok(v, budget - 1) for v in children if isinstance(v, (dict, list)))
