"""The embedded OADA server: SQLite storage, HTTP and WebSocket on one port.

>>> async with anyio.create_task_group() as tg:  # doctest: +SKIP
...     handle = await tg.start(serve, ServerConfig(db="oada.sqlite3"))
...     ...  # talk to handle.url with the token "god"
...     handle.shutdown()

For tests, :func:`oada_jobs.testing.embedded_server` wraps this. The core,
the ASGI app and the runner are imported on first use, so importing this
package (for :class:`ServerConfig`, say) stays cheap.

The server knows nothing of the framework or the client: from the rest of
the package it may import only ``_pointer``, ``_ksuid``, ``_version`` and
``exceptions``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import ServerConfig, TokenInfo

if TYPE_CHECKING:
    from .app import create_app
    from .core import OADACore
    from .runner import ServerHandle, serve

__all__ = ["OADACore", "ServerConfig", "ServerHandle", "TokenInfo", "create_app", "serve"]

_LAZY = {
    "OADACore": ".core",
    "create_app": ".app",
    "ServerHandle": ".runner",
    "serve": ".runner",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
