"""The async OADA client (httpx + websockets).

>>> from oada_jobs.client import OADAClient
>>> async with OADAClient("http://127.0.0.1:8080", "god") as oada:  # doctest: +SKIP
...     await oada.put("/bookmarks/x", {"a": 1})

See docs/client.md for connections, trees, watches, clones and retries.

The client knows nothing of the framework or the server: from the rest of
the package it may import only ``exceptions``, ``_retry``, ``_ksuid`` and
``_version``.
"""

from ._client import ClientState, Connection, OADAClient
from ._common import BaseURL, parse_domain
from ._response import Change, Response
from ._watch import Watch, WatchState, WatchType

__all__ = [
    "BaseURL",
    "Change",
    "ClientState",
    "Connection",
    "OADAClient",
    "Response",
    "Watch",
    "WatchState",
    "WatchType",
    "parse_domain",
]
