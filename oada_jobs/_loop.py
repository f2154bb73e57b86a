"""How oada-jobs processes run: on uvloop, with a collector set for a server.

uvloop is a dependency except on Windows; it cuts the CPU each request costs
the service and the embedded server (see docs/benchmarks.md). uvicorn picks
it by itself; commands that enter ``anyio.run`` ask for it here.

CPython's cyclic garbage collector is tuned for short scripts: a young
collection every 700 container allocations, and a full one every hundred of
those once the heap has grown by a quarter. A service or server allocates a
few dozen containers per request and holds a large, long-lived heap (the
embedded server caches documents and change records). In two benchmark runs
of 3,000 jobs the server spent about 600 ms collecting, 420 ms of it in four
full collections that each blocked its event loop for about 100 ms; tuned as
below, under 200 ms and none during the runs. :func:`run` therefore
freezes what start-up loaded (modules, classes, settings: never garbage) out
of the collector's sight and collects young objects every
:data:`GC_THRESHOLDS` allocations. Reference counting still frees almost
everything at once; only cycles wait a little longer.

Owns how a process's event loop is run; imports nothing from the package and
must not start any service itself.
"""

from __future__ import annotations

import gc
from collections.abc import Awaitable, Callable
from typing import Any, TypeVarTuple

import anyio

__all__ = ["GC_THRESHOLDS", "backend_options", "run", "tune_gc"]

#: ``gc.set_threshold`` arguments for long-running processes.
GC_THRESHOLDS = (10_000, 10, 10)

_Args = TypeVarTuple("_Args")


def backend_options() -> dict[str, Any]:
    """``anyio.run`` backend options: uvloop when it can be imported."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return {}
    return {"use_uvloop": True}


def tune_gc() -> None:
    """Freeze the objects start-up made and collect young ones less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def run(main: Callable[[*_Args], Awaitable[Any]], *args: *_Args) -> Any:
    """``anyio.run(main, *args)`` as a process's body: :func:`tune_gc`, then uvloop."""
    tune_gc()
    return anyio.run(main, *args, backend_options=backend_options())
