"""Client benchmark: this package's OADAClient against the official @oada/client 5.3.0.

Both clients talk to the same embedded OADA server, running in its own
process, in the same run, taking turns (Python, Node, Python, Node, ...) so
drift in the machine's load hits both alike. Each turn times, per connection
mode (``ws`` and ``http``):

- ``seq_put`` / ``seq_get``: *n* PUTs, then *n* GETs, one after the other;
- ``conc_put`` / ``conc_get``: *n* PUTs, then *n* GETs, all started at once
  with the client's concurrency limit at *concurrency*.

The table shows requests per second (median, min-max) and ours / official
throughput (above 1x: this client is faster).

    python -m bench.client [--quick] [--n 1000] [--http-n 300] [--rounds 3] [--concurrency 10]

``run(quick=False)`` returns the figures as a report table (``title``,
``description``, ``columns``, ``rows``, ``notes``) plus the raw samples.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio

ROOT = Path(__file__).resolve().parent.parent
NODE_SCRIPT = Path(__file__).resolve().parent / "node" / "client_bench.mjs"
NODE_MODULES = ROOT / "conformance" / "node_modules"
PHASES = ("seq_put", "seq_get", "conc_put", "conc_get")
MODES = ("ws", "http")
TOKEN = "god"  # the embedded server's development token


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def serve_child(port: int) -> None:
    """Run the embedded server on 127.0.0.1:*port* (in-memory store) until killed."""
    import uvicorn

    from oada_jobs.server.app import create_app
    from oada_jobs.server.config import ServerConfig

    app = create_app(ServerConfig())
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")


class Server:
    """The embedded server in a child process (so it never shares a CPU loop with a client)."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Server:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "bench.client", "--serve", str(self.port)],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"the server exited with status {self._process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("the server did not start listening within 30 s")

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()


async def python_side(
    url: str, connection: str, n: int, concurrency: int, base: str
) -> dict[str, float]:
    """Time the four phases with :class:`OADAClient`."""
    from oada_jobs.client import OADAClient

    result: dict[str, float] = {}
    async with OADAClient(url, TOKEN, connection=connection, concurrency=concurrency) as oada:  # type: ignore[arg-type]
        await oada.put(base, {"ready": True})

        start = time.perf_counter()
        for i in range(n):
            await oada.put(f"{base}/seq", {"i": i})
        result["seq_put"] = time.perf_counter() - start

        start = time.perf_counter()
        for _ in range(n):
            await oada.get(f"{base}/seq")
        result["seq_get"] = time.perf_counter() - start

        start = time.perf_counter()
        async with anyio.create_task_group() as group:
            for i in range(n):
                group.start_soon(oada.put, f"{base}/c{i % 10}", {"i": i})
        result["conc_put"] = time.perf_counter() - start

        start = time.perf_counter()
        async with anyio.create_task_group() as group:
            for i in range(n):
                group.start_soon(oada.get, f"{base}/c{i % 10}")
        result["conc_get"] = time.perf_counter() - start
    return result


async def node_side(
    url: str, connection: str, n: int, concurrency: int, base: str
) -> dict[str, float]:
    """Time the four phases with @oada/client 5.3.0 (bench/node/client_bench.mjs)."""
    done = await anyio.run_process(
        ["node", str(NODE_SCRIPT), url, TOKEN, connection, str(n), str(concurrency), base],
        env={**os.environ, "OADA_NODE_MODULES": str(NODE_MODULES)},
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"the Node client failed: {done.stderr.decode(errors='replace')[-2000:]}"
        )
    result: dict[str, float] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return result


LABELS = {
    "seq_put": "sequential PUT",
    "seq_get": "sequential GET",
    "conc_put": "concurrent PUT",
    "conc_get": "concurrent GET",
}


async def measure(
    *, sizes: dict[str, int], rounds: int, concurrency: int, modes: Sequence[str] = MODES
) -> dict[str, dict[str, dict[str, list[float]]]]:
    """Seconds per phase: ``samples[mode][side][phase]`` has one entry per round.

    ``sizes[mode]`` is the number of requests per phase in that mode.
    """
    samples: dict[str, dict[str, dict[str, list[float]]]] = {
        mode: {side: {phase: [] for phase in PHASES} for side in ("python", "node")}
        for mode in modes
    }
    with Server() as server:
        for round_ in range(rounds):
            for mode in modes:
                # Alternate who goes first, so neither always meets a warmer server.
                order = ("python", "node") if round_ % 2 == 0 else ("node", "python")
                for side in order:
                    base = f"/resources/bench-client-{side}-{mode}-{round_}"
                    runner = python_side if side == "python" else node_side
                    try:
                        figures = await runner(server.url, mode, sizes[mode], concurrency, base)
                    except Exception as error:
                        raise RuntimeError(
                            f"the {side} client failed in {mode} mode, round {round_ + 1}: {error}"
                        ) from error
                    for phase in PHASES:
                        samples[mode][side][phase].append(figures[phase])
    return samples


def _rate(n: int, seconds: list[float]) -> str:
    rates = sorted(n / value for value in seconds if value > 0)
    median = statistics.median(rates)
    if len(rates) == 1:
        return f"{median:,.0f}"
    return f"{median:,.0f} ({rates[0]:,.0f}-{rates[-1]:,.0f})"


def run(
    *,
    quick: bool = False,
    n: int | None = None,
    http_n: int | None = None,
    rounds: int | None = None,
    concurrency: int = 10,
    modes: Sequence[str] = MODES,
) -> dict[str, Any]:
    """Run the benchmark and return it as a report table (see the module docstring).

    *quick*: 50 requests per phase, one round (a smoke run of a few seconds).
    Otherwise *n* = 1,000 requests per phase over the WebSocket and *http_n*
    = 300 over HTTP (an HTTP round trip costs the server several times a
    WebSocket one; this keeps the full run near two minutes), 3 rounds.
    """
    n = n if n is not None else (50 if quick else 1000)
    http_n = http_n if http_n is not None else (n if quick else max(50, n * 3 // 10))
    rounds = rounds if rounds is not None else (1 if quick else 3)
    sizes = {"ws": n, "http": http_n}
    samples = anyio.run(
        lambda: measure(sizes=sizes, rounds=rounds, concurrency=concurrency, modes=modes)
    )
    rows: list[list[Any]] = []
    ratios: dict[str, float] = {}
    best_ratios: dict[str, float] = {}
    for mode in modes:
        for phase in PHASES:
            ours = samples[mode]["python"][phase]
            theirs = samples[mode]["node"][phase]
            ratio = statistics.median(theirs) / statistics.median(ours)
            best = min(theirs) / min(ours)
            ratios[f"{mode}.{phase}"] = ratio
            best_ratios[f"{mode}.{phase}"] = best
            rows.append(
                [
                    f"{mode.upper()} {LABELS[phase]}, req/s",
                    _rate(sizes[mode], ours),
                    _rate(sizes[mode], theirs),
                    f"{ratio:.2f}x",
                    f"{best:.2f}x",
                ]
            )
    return {
        "title": "OADA client",
        "description": (
            f"oada_jobs.client.OADAClient against the official @oada/client 5.3.0 (Node), "
            f"both on one embedded OADA server (plain HTTP, in-memory store) in its own "
            f"process, taking turns. Per connection mode, each client makes N PUTs "
            f"then N GETs one after the other, then N PUTs and N GETs all at once with "
            f"a concurrency limit of {concurrency} (N = {n:,} over the WebSocket, "
            f"{http_n:,} over HTTP). Median requests/s over "
            f"{rounds} round(s), min-max in brackets; the last two columns are ours / official "
            f"throughput (above 1x: oada-jobs is faster)."
        ),
        "columns": [
            "Measurement",
            "oada-jobs",
            "@oada/client 5.3.0",
            "Speed-up (medians)",
            "Speed-up (best runs)",
        ],
        "rows": rows,
        "notes": [
            "Each client's time includes its own CPU and the shared server's; the "
            "server runs in a separate process, so the clients never share its event loop.",
            "On a busy machine the spread is wide; the best runs (least interference) "
            "show the clients' own speed more faithfully than the medians.",
        ],
        "n": n,
        "http_n": http_n,
        "rounds": rounds,
        "concurrency": concurrency,
        "speedup": ratios,
        "speedup_best": best_ratios,
        "samples": samples,
    }


def format_table(result: dict[str, Any]) -> str:
    widths = [
        max(len(str(row[i])) for row in [result["columns"], *result["rows"]]) for i in range(5)
    ]
    lines = [result["description"], ""]
    for row in [result["columns"], *result["rows"]]:
        lines.append(
            "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True))
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="50 requests per phase, one round")
    parser.add_argument("--n", type=int, help="requests per phase (default 1000)")
    parser.add_argument("--http-n", type=int, help="requests per HTTP phase (default 300)")
    parser.add_argument("--rounds", type=int, help="rounds (default 3)")
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve_child(args.serve)
        return
    result = run(
        quick=args.quick,
        n=args.n,
        http_n=args.http_n,
        rounds=args.rounds,
        concurrency=args.concurrency,
        modes=args.modes.split(","),
    )
    print(json.dumps(result, indent=2) if args.json else format_table(result))


if __name__ == "__main__":
    main()
