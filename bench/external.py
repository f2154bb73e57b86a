"""Run ``bench.<name>.run()`` in a child process and print its result as JSON.

``python -m bench`` calls the server and client benchmarks (owned next to
their code, in ``bench/server.py`` and ``bench/client.py``) through this, so a
hang or crash there costs a timeout, not the whole report.

    python -m bench.external server [--quick]
"""

from __future__ import annotations

import importlib
import inspect
import json
import sys


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"server", "client"}:
        print("usage: python -m bench.external {server,client} [--quick]", file=sys.stderr)
        return 2
    quick = "--quick" in argv[1:]
    run = importlib.import_module(f"bench.{argv[0]}").run
    if "quick" in inspect.signature(run).parameters:
        result = run(quick=quick)
    elif quick:
        result = {"error": f"bench/{argv[0]}.py: run() has no quick= option; skipped in --quick"}
    else:
        result = run()
    sys.stdout.write("\n" + json.dumps(result, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
