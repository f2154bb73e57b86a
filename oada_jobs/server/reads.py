"""Answering reads: GET and HEAD of a resource, its ``_meta`` and its change feed.

:class:`Reader` builds the answer to a read the core has routed: the
resolved document or value, its ETag and ``x-oada-rev``, ``If-Match`` and
``If-None-Match`` (304), ``Accept`` (406) and the ``_meta/_changes``
listing. :func:`well_known` and :func:`user_document` answer the fixed
documents beside the resources.

Owns how a read is answered; must not write, nor import the framework, the
client or a transport. Every read is authorized through
:class:`~oada_jobs.server.guard.Guard`.
"""

from __future__ import annotations

from collections.abc import Mapping

from oada_jobs.server.config import TokenInfo
from oada_jobs.server.documents import MISSING, dumpb, dumpb_kept, dumps, is_json_type, lookup
from oada_jobs.server.edge import Reject, parse_rev
from oada_jobs.server.feed import ChangeFeed
from oada_jobs.server.graph import ResourceGraph
from oada_jobs.server.guard import Guard
from oada_jobs.server.messages import CoreRequest, CoreResponse, accepts, etag, etag_matches
from oada_jobs.server.store import Resource

__all__ = ["Reader", "user_document", "well_known"]

_META_TYPE = "application/vnd.oada.meta+json"
_JSON_HEADERS = {"content-type": "application/json"}


class Reader:
    """Answers GET and HEAD of resources.

    :param graph: Resolves paths.
    :param feed: The change history.
    :param guard: Authorizes every read.
    :param reference_quirks: Answer a missing resource under ``/resources`` 403, as the
        reference server does.
    :param max_changes_listed: Revs listed by ``_meta/_changes``.
    """

    def __init__(
        self,
        graph: ResourceGraph,
        feed: ChangeFeed,
        guard: Guard,
        *,
        reference_quirks: bool,
        max_changes_listed: int,
    ) -> None:
        self._graph = graph
        self._feed = feed
        self._guard = guard
        self._reference_quirks = reference_quirks
        self._max_changes_listed = max_changes_listed

    def read(
        self,
        req: CoreRequest,
        token: TokenInfo,
        prefix: str,
        resource_id: str,
        rest: list[str],
        *,
        head: bool,
    ) -> CoreResponse:
        guard = self._guard
        r = self._graph.resolve(resource_id, rest)
        res = r.resource
        guard.authorize(token, guard.access(r.resource_id, res, via=prefix))
        headers = r.location()
        if res is None:
            if self._reference_quirks and prefix == "resources":
                raise Reject(403, "User does not have read permission for this resource", headers)
            raise Reject(404, "Not Found", headers)
        rev = res.rev
        tag = etag(res.id, rev)
        headers["x-oada-rev"] = str(rev)
        headers["etag"] = tag
        headers["vary"] = "Accept"
        if_match = req.headers.get("if-match")
        if if_match is not None and not etag_matches(if_match, res.id, rev):
            raise Reject(412, "If-Match header does not match current resource _rev", headers)
        if_none = req.headers.get("if-none-match")
        if if_none is not None and etag_matches(if_none, res.id, rev):
            return CoreResponse(304, headers)
        media_type, body = self._body(token, res, r.leftover, headers)
        accept = req.headers.get("accept")
        if accept and not accepts(accept, media_type):
            raise Reject(406, f"cannot produce {media_type} for Accept: {accept}", headers)
        headers["content-type"] = media_type
        return CoreResponse(200, headers, b"" if head else body)

    def _body(
        self, token: TokenInfo, res: Resource, leftover: list[str], headers: dict[str, str]
    ) -> tuple[str, bytes]:
        """The media type and body of *res* at *leftover*."""
        media_type = res.type or "application/json"
        body: bytes
        if not leftover:
            if res.data is not None and not is_json_type(media_type):
                body = res.data
            else:
                body = self._root_json(res)
        elif leftover[0] == "_meta":
            media_type = _META_TYPE
            body = self._meta_body(token, res, leftover, headers)
        else:
            if res.data is not None and not is_json_type(media_type) and leftover != ["_rev"]:
                raise Reject(
                    404,
                    f"{media_type} resources have no sub-paths; GET the resource itself",
                    headers,
                )
            value = lookup(res.doc, leftover)
            if value is MISSING or value is None:
                raise Reject(404, "Not Found", headers)
            body = dumpb(value)
        return media_type, body

    @staticmethod
    def _root_json(res: Resource) -> bytes:
        cached = res.root_json
        if cached is None:
            body = res.whole()
            body["_meta"] = {"_id": f"{res.id}/_meta", "_rev": res.rev}
            cached = res.root_json = dumpb_kept(body)
        return cached

    def _meta_body(
        self, token: TokenInfo, res: Resource, leftover: list[str], headers: dict[str, str]
    ) -> bytes:
        if len(leftover) >= 2 and leftover[1] == "_changes":
            if len(leftover) == 2:
                return self._changes_listing(res)
            rev_text = leftover[2]
            # A key without digits is just not there; one with digits must
            # be a rev the store can look up.
            if len(leftover) == 3 and any(c.isdigit() for c in rev_text):
                rev = parse_rev(rev_text, "the rev after _meta/_changes/")
                feed = self._feed
                if rev and rev < feed.first_rev(res):
                    # An earlier resource with this id: not this one's history.
                    raise Reject(404, "Not Found", headers)
                change = feed.change_array(res.id, rev)
                return dumpb(self._guard.visible(token, res.id, change))
            raise Reject(404, "Not Found", headers)
        value = lookup(res.doc, leftover)
        if value is MISSING or value is None:
            raise Reject(404, "Not Found", headers)
        return dumpb(value)

    def _changes_listing(self, res: Resource) -> bytes:
        """``{"<rev>": {"_rev", "_id"}, ...}`` for the last ``max_changes_listed`` revs.

        A resource's history grows with every write, and this is built in
        one pass of the event loop: bounding it bounds how long other
        clients wait (older revs stay readable one by one). Written as text
        directly, the id escaped once: the same JSON as encoding the
        mapping, several times faster.
        """
        revs = self._feed.latest_history(res, self._max_changes_listed)
        prefix = dumps(f"{res.id}/_meta/_changes/")[:-1]
        items = ",".join([f'"{r}":{{"_rev":{r},"_id":{prefix}{r}"}}' for r in revs])
        return f"{{{items}}}".encode()


def no_route(method: str, raw: str) -> Reject:
    return Reject(404, f"Route {method.upper()}:{raw} not found")


def well_known(
    method: str, raw: str, segments: list[str], headers: Mapping[str, str]
) -> CoreResponse:
    """The ``/.well-known`` configuration documents."""
    names = ("oada-configuration", "openid-configuration", "oauth-authorization-server")
    if len(segments) != 2 or segments[1] not in names:
        raise no_route(method, raw)
    if method not in ("get", "head"):
        raise Reject(405, f"method {method.upper()} is not supported", {"allow": "GET, HEAD"})
    scheme = headers.get("x-forwarded-proto") or "https"
    host = headers.get("host") or "localhost"
    base = f"{scheme}://{host}"
    doc = {
        "well_known_version": "1.1.0",
        "oada_version": "0.1.0",
        "oada_base_uri": base,
        "issuer": base,
        "authorization_endpoint": f"{base}/oadaauth/auth",
        "token_endpoint": f"{base}/oadaauth/token",
        "registration_endpoint": f"{base}/oadaauth/register",
        "token_endpoint_auth_signing_alg_values_supported": ["RS256"],
        "scopes_supported": [{"name": "oada.all.1", "read+write": True}],
    }
    body = b"" if method == "head" else dumpb(doc)
    return CoreResponse(200, dict(_JSON_HEADERS), body)


def user_document(method: str, raw: str, segments: list[str], token: TokenInfo) -> CoreResponse:
    """``/users/me``: the token's user, with their bookmarks and shares."""
    if segments[0] != "users" or segments[1:] != ["me"]:
        raise Reject(404, f"Not Found: {raw}")
    if method not in ("get", "head"):
        raise Reject(
            405,
            f"method {method.upper()} is not supported on /users/me",
            {"allow": "GET, HEAD"},
        )
    doc = {
        "_id": token.user,
        "username": token.user.removeprefix("users/"),
        "bookmarks": {"_id": token.bookmarks},
        "shares": {"_id": token.shares_id},
    }
    headers = {
        "content-type": "application/vnd.oada.user.1+json",
        "content-location": f"/{token.user}",
    }
    return CoreResponse(200, headers, b"" if method == "head" else dumpb(doc))
