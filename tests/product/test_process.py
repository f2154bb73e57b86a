"""How long-running oada-jobs processes run (``oada_jobs._loop.run``)."""

from __future__ import annotations

import json
import subprocess
import sys

from oada_jobs._loop import GC_THRESHOLDS

_PROBE = """
import asyncio, gc, json, sys
from oada_jobs._loop import run

async def main(word):
    loop = type(asyncio.get_running_loop())
    return {
        "word": word,
        "thresholds": gc.get_threshold(),
        "frozen": gc.get_freeze_count(),
        "loop": f"{loop.__module__}.{loop.__name__}",
    }

print(json.dumps(run(main, "hello")))
"""


def test_run_freezes_start_up_and_collects_young_objects_less_often() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=60, check=True
    )
    seen = json.loads(done.stdout)
    assert seen["word"] == "hello"
    assert tuple(seen["thresholds"]) == GC_THRESHOLDS
    # Everything imported before the loop started (oada_jobs, anyio, ...).
    assert seen["frozen"] > 10_000
    assert seen["loop"].startswith("uvloop")
