"""The event loop of the Python benchmark processes (kept import-light for start-up)."""

from __future__ import annotations

from typing import Any


def backend_options() -> dict[str, Any]:
    """``anyio.run`` options for the Python benchmark processes: uvloop when installed.

    uvicorn runs on uvloop by itself when it is installed (it is a dependency
    of oada-jobs except on Windows); the server and the Python service here
    run inside ``anyio.run`` and so ask for it explicitly.
    """
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return {}
    return {"use_uvloop": True}
