"""The event loop oada-jobs processes run on: uvloop where it is installed.

uvloop is a dependency except on Windows; it cuts the CPU each request costs
the service and the embedded server (see docs/benchmarks.md). uvicorn picks
it by itself; commands that enter ``anyio.run`` ask for it here.
"""

from __future__ import annotations

from typing import Any


def backend_options() -> dict[str, Any]:
    """``anyio.run`` backend options: uvloop when it can be imported."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return {}
    return {"use_uvloop": True}
