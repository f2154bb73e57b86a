"""The service's queues list: which other OADA stores it takes jobs from.

``/bookmarks/services/<name>/queues`` holds one ``{"domain", "token"}``
entry per store (or a link to a resource holding one). :class:`QueuesList`
watches it and hands the valid entries, by key, to its ``apply`` callable
each time the list changes; an invalid entry is logged once (never with
its token) and left out.

Owns :class:`QueuesList`, :class:`QueueEntry` and :func:`parse_queue_entry`
(the one place an entry is validated). May use the client; must not touch
the queues themselves or the service: what to start and stop is ``apply``'s.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from ._retry import Delay, retry
from .client import OADAClient, parse_domain
from .client._client import check_token
from .exceptions import InvalidKey, InvalidQueueEntry, OADAError, redact
from .tree import Layout, resource_path

__all__ = ["QueueEntry", "QueuesList", "parse_queue_entry"]

logger = logging.getLogger("oada_jobs")

#: Takes the valid entries by key; *wait*: until the new queues watch their lists.
Apply = Callable[[dict[str, "QueueEntry"], bool], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class QueueEntry:
    """A valid entry of the service's ``queues`` list."""

    domain: str
    token: str = field(repr=False)


_NAMES: dict[type, str] = {dict: "an object", list: "a list", str: "a string"}


def _describe(value: object) -> str:
    return "null" if value is None else _NAMES.get(type(value), f"a {type(value).__name__}")


def parse_queue_entry(key: str, value: object) -> QueueEntry:
    """Validate a ``queues`` entry, or raise :class:`InvalidQueueEntry` (never naming the token)."""
    if not isinstance(value, Mapping):
        raise InvalidQueueEntry(
            f"queue entry {key!r} is ignored: expected an object with 'domain' and 'token', "
            f"got {_describe(value)}",
            key=key,
        )
    token = value.get("token")
    problems = []
    domain = value.get("domain")
    normalised = None
    if domain is None:
        problems.append("'domain' is missing")
    elif not isinstance(domain, str):
        problems.append(f"'domain' must be a string, got {_describe(domain)}")
    else:
        try:
            if any(char.isspace() for char in domain.strip()):
                raise ValueError(f"expected a host name without spaces, got {domain!r}")
            normalised = parse_domain(domain).http
        except ValueError as error:
            problems.append(f"'domain' is malformed: {error}")
    if token is None:
        problems.append("'token' is missing")
    elif not isinstance(token, str) or not token.strip():
        problems.append(f"'token' must be a non-empty string, got {_describe(token)}")
    else:
        try:
            check_token(token)
        except ValueError as error:
            problems.append(f"'token' is malformed: {error}")
    if problems or normalised is None or not isinstance(token, str):
        secret = token.strip() if isinstance(token, str) else ""
        # Only what is said of the entry is masked: the key is the list's own
        # name for it, and masking it too would mangle which entry is meant.
        said = redact("; ".join(problems), secret)
        raise InvalidQueueEntry(f"queue entry {key!r} is ignored: {said}", key=key)
    return QueueEntry(normalised, token)


class QueuesList:
    """Follows a service's queues list (see the module docstring).

    :param name: the service name.
    :param layout: where the list is, and its tree.
    :param backoff: waits between retries after the list could not be read.
    :param apply: takes the valid entries each time the list changes.
    """

    def __init__(self, name: str, *, layout: Layout, backoff: Delay, apply: Apply) -> None:
        self.name = name
        self.path = layout.queues_path(name)
        self.layout = layout
        self.backoff = backoff
        self.apply = apply
        # Entries logged as invalid, with the message: each is logged once.
        self._invalid_seen: dict[str, str] = {}

    async def follow(self, oada: OADAClient, ready: Callable[[], None]) -> None:
        """Watch the list with *oada* until cancelled; *ready* once the entries
        listed at first have been applied (and their queues watch their lists).

        Until then an error reading the list is raised (``start()`` fails
        clearly, e.g. when the token is refused); after it, it is retried.
        """
        started = False

        def on_ready() -> None:
            nonlocal started
            started = True
            ready()

        def failed(error: BaseException, delay: float) -> None:
            logger.error(
                "service %s: watching the queues list failed: %s; retrying in %.1f s",
                self.name,
                error,
                delay,
            )

        while True:
            await retry(
                lambda: self._watch(oada, on_ready, first=not started),
                retryable=lambda error: isinstance(error, OADAError) and started,
                delay=self.backoff,
                on_retry=failed,
            )

    async def _watch(self, oada: OADAClient, ready: Callable[[], None], *, first: bool) -> None:
        path = self.path
        await oada.ensure(path, {}, tree=self.layout.tree)
        response = await oada.get(path)
        last_rev = response.rev or 0
        async with oada.watch(path, rev=response.rev) as changes:
            # start() returns once the queues listed now watch their lists.
            await self._reconcile(oada, response.data, wait=first)
            ready()
            async for change in changes:
                if change.rev and change.rev <= last_rev:
                    continue
                # Entries may change partly (one key) or be links: re-read
                # the whole list and compare with what runs.
                response = await oada.get(path)
                last_rev = max(response.rev or 0, change.rev or 0)
                await self._reconcile(oada, response.data, wait=False)

    async def _entry(self, oada: OADAClient, key: str, value: object) -> QueueEntry | None:
        if isinstance(value, Mapping) and "_id" in value and "domain" not in value:
            # A linked entry: its content lives in its own resource.
            try:
                value = (await oada.get(resource_path(value["_id"]))).data
            except (OADAError, InvalidKey) as error:
                logger.error(
                    "service %s: queue entry %r could not be read: %s", self.name, key, error
                )
                return None
        try:
            entry = parse_queue_entry(key, value)
        except InvalidQueueEntry as error:
            message = str(error)
            if self._invalid_seen.get(key) != message:
                self._invalid_seen[key] = message
                logger.error("service %s: %s", self.name, message)
            return None
        self._invalid_seen.pop(key, None)
        return entry

    async def _reconcile(self, oada: OADAClient, listing: object, *, wait: bool) -> None:
        if not isinstance(listing, Mapping):
            logger.error(
                "service %s: expected the queues list to be an object, got %s",
                self.name,
                _describe(listing),
            )
            return
        wanted: dict[str, QueueEntry] = {}
        for key, value in listing.items():
            if key.startswith("_"):
                continue
            entry = await self._entry(oada, key, value)
            if entry is not None:
                wanted[key] = entry
        await self.apply(wanted, wait)
