"""An event-loop stall probe for the benchmark processes (server and service).

:func:`probe` runs as a task next to a process's work when the environment
names a file in ``BENCH_LAG_FILE``. It wakes every :data:`TICK` seconds and
measures how late each wake-up is: a late wake-up is the time the loop was
blocked (by a long callback, a garbage collection, a large write). Every
:data:`WINDOW` seconds it appends one JSON line to the file::

    {"t": <time.time()>, "lag_ms": <largest lateness>, "cpu_ms": <largest busy stretch>,
     "gc_ms": <longest collection>, "gc_cpu_ms": <its CPU time>,
     "gc_full": <full collections>,
     "tracked": <objects the collector tracks, every tenth line>}

Lateness is wall-clock time, so on a machine shared with other work it also
counts the time the process waited for a core. ``cpu_ms`` is the event-loop
thread's own CPU time between two wake-ups (``time.thread_time``): the part
of a stall the process spent computing, which other work on the machine does
not inflate. A ``gc.callbacks`` hook times every collection, so a stall can
be told apart from one caused by the garbage collector, and the collection's
own CPU time from the time it waited for a core. The probe costs a
hundred wake-ups a second.
"""

from __future__ import annotations

import gc
import json
import os
import time
from typing import Any

import anyio

__all__ = ["TICK", "WINDOW", "probe", "probe_from_env"]

#: Seconds between the probe's wake-ups.
TICK = 0.01
#: Seconds each line of the file sums up.
WINDOW = 1.0


class _GCTimer:
    """Longest collection (wall and CPU time) and full collections since the last :meth:`take`."""

    def __init__(self) -> None:
        self._started = self._cpu_started = 0.0
        self.longest = self.longest_cpu = 0.0
        self.full = 0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            self._cpu_started = time.thread_time()
            return
        self.longest = max(self.longest, time.perf_counter() - self._started)
        self.longest_cpu = max(self.longest_cpu, time.thread_time() - self._cpu_started)
        if info.get("generation") == 2:
            self.full += 1

    def take(self) -> tuple[float, float, int]:
        out = self.longest, self.longest_cpu, self.full
        self.longest = self.longest_cpu = 0.0
        self.full = 0
        return out


async def probe(path: str) -> None:
    """Append the loop's largest lateness per :data:`WINDOW` to *path* until cancelled."""
    timer = _GCTimer()
    gc.callbacks.append(timer)
    try:
        with open(path, "a", buffering=1) as out:
            lines = 0
            worst = busiest = 0.0
            window_end = time.perf_counter() + WINDOW
            while True:
                before = time.perf_counter()
                cpu_before = time.thread_time()
                await anyio.sleep(TICK)
                now = time.perf_counter()
                worst = max(worst, now - before - TICK)
                busiest = max(busiest, time.thread_time() - cpu_before)
                if now >= window_end:
                    longest, longest_cpu, full = timer.take()
                    line = {
                        "t": time.time(),
                        "lag_ms": round(worst * 1000, 2),
                        "cpu_ms": round(busiest * 1000, 2),
                        "gc_ms": round(longest * 1000, 2),
                        "gc_cpu_ms": round(longest_cpu * 1000, 2),
                        "gc_full": full,
                    }
                    lines += 1
                    if lines % 10 == 0:
                        # What a full collection goes through (counting it
                        # takes a few ms, left out of the next window).
                        line["tracked"] = len(gc.get_objects())
                    out.write(json.dumps(line) + "\n")
                    worst = busiest = 0.0
                    window_end = time.perf_counter() + WINDOW
    finally:
        gc.callbacks.remove(timer)


async def probe_from_env() -> None:
    """:func:`probe` into ``$BENCH_LAG_FILE``; returns at once when it is not set."""
    path = os.environ.get("BENCH_LAG_FILE")
    if path:
        await probe(path)
