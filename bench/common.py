"""Shared machinery of the benchmarks.

- :func:`bench_server`: the embedded OADA server in TLS mode, in its own
  process on a free loopback port, counting requests per token;
- :class:`ChildProcess`: a child speaking one JSON object a line on stdout
  (the server, and the Python and Node job services);
- :func:`summarize`, :func:`percentile`: medians and spreads;
- :func:`machine`: what the figures were measured on.
"""

from __future__ import annotations

import json
import os
import platform
import secrets
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import anyio
import anyio.abc
import httpx
import psutil  # type: ignore[import-untyped]  # psutil ships no type information
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

ROOT = Path(__file__).resolve().parent.parent
NODE_DIR = ROOT / "conformance"
NODE_SERVICE = Path(__file__).resolve().parent / "node" / "oada_jobs_service.cjs"

#: The labels of the tokens a benchmark server knows. Each is a separate
#: bearer token of the same user, so requests can be counted per role.
TOKEN_LABELS = ("harness", "service", "node", "admin")

#: The user every benchmark token stands for (the development user ``sam``).
USER = "users/default:users_sam_321"
BOOKMARKS = "resources/default:resources_bookmarks_321"


class BenchError(RuntimeError):
    """A benchmark could not be run; the message says which step failed and why."""


# --------------------------------------------------------------- statistics


def percentile(values: Sequence[float], q: float) -> float:
    """The *q*-th percentile (0 to 100) of *values*, linearly interpolated."""
    if not values:
        raise ValueError("expected at least one value")
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(values: Sequence[float]) -> dict[str, Any]:
    """Median and spread of repeated measurements: ``{median, min, max, runs}``."""
    if not values:
        raise ValueError("expected at least one measurement")
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "runs": list(values),
    }


# --------------------------------------------------------------- machine


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    for line in text.splitlines():
        if line.lower().startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _command_output(argv: Sequence[str], cwd: Path | None = None) -> str | None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=cwd, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def _package_version(package_json: Path) -> str | None:
    try:
        version = json.loads(package_json.read_text()).get("version")
    except (OSError, ValueError):
        return None
    return version if isinstance(version, str) else None


def machine() -> dict[str, Any]:
    """Cores, CPU model, memory and the versions of everything measured."""
    from oada_jobs import __version__

    jobs_dir = NODE_DIR / "node_modules" / "oada-jobs-1"
    return {
        "cores": os.cpu_count(),
        "cpu": _cpu_model(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "node": _command_output(["node", "--version"]),
        "oada_jobs": __version__,
        "oada_jobs_node": _package_version(jobs_dir / "package.json"),
        "oada_client_node": _package_version(
            jobs_dir / "node_modules" / "@oada" / "client" / "package.json"
        ),
        "commit": _command_output(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT),
    }


def node_available() -> str | None:
    """Why the Node side cannot run, or ``None`` when it can."""
    if shutil.which("node") is None:
        return "node is not installed"
    if not (NODE_DIR / "node_modules" / "oada-jobs-1" / "package.json").exists():
        return "conformance/node_modules has no oada-jobs-1 (run `make setup`)"
    return None


# --------------------------------------------------------------- processes


@dataclass
class ChildProcess:
    """A running child that writes one JSON object a line on stdout.

    Use :func:`child_process`; :meth:`expect` waits for an ``event``,
    :meth:`stop` sends SIGTERM and returns the ``exit`` event.
    """

    name: str
    process: anyio.abc.Process
    log_path: Path
    _events: MemoryObjectReceiveStream[dict[str, Any]]
    exit_event: dict[str, Any] | None = field(default=None)

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.process.pid

    def log_tail(self, lines: int = 15) -> str:
        """The last *lines* of the child's stderr (tokens are never printed there)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    async def expect(self, event: str, timeout: float) -> dict[str, Any]:
        """Wait up to *timeout* seconds for ``{"event": event}``; raise :class:`BenchError`."""
        try:
            with anyio.fail_after(timeout):
                async for message in self._events:
                    if message.get("event") == event:
                        return message
        except TimeoutError:
            raise BenchError(
                f"{self.name}: no {event!r} within {timeout:.0f} s; stderr:\n{self.log_tail()}"
            ) from None
        raise BenchError(
            f"{self.name} exited (status {self.process.returncode}) before {event!r}; "
            f"stderr:\n{self.log_tail()}"
        )

    async def stop(self, timeout: float = 30) -> dict[str, Any] | None:
        """SIGTERM the child and return its ``exit`` event (``None`` if it sent none)."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.exit_event = await self.expect("exit", timeout)
        except BenchError:
            self.exit_event = None
        with anyio.move_on_after(timeout):
            await self.process.wait()
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        return self.exit_event


async def _pump(stream: anyio.abc.ByteReceiveStream, out: MemoryObjectSendStream[Any]) -> None:
    buffer = b""
    async with out:
        async for chunk in stream:
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                try:
                    message = json.loads(line)
                except ValueError:
                    continue
                if isinstance(message, dict):
                    await out.send(message)


@asynccontextmanager
async def child_process(
    name: str, argv: Sequence[str], *, env: Mapping[str, str], log_dir: Path
) -> AsyncIterator[ChildProcess]:
    """Start *argv* with *env* (added to a minimal environment); kill it on exit."""
    log_path = log_dir / f"{name}-{secrets.token_hex(3)}.log"
    base = {key: os.environ[key] for key in ("PATH", "HOME", "LANG", "TMPDIR") if key in os.environ}
    log: IO[bytes]
    with log_path.open("wb") as log:
        process = await anyio.open_process(
            list(argv),
            env={**base, **env},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            cwd=ROOT,
        )
        send, receive = anyio.create_memory_object_stream[dict[str, Any]](10_000)
        async with AsyncExitStack() as stack:
            stack.enter_context(receive)
            group = await stack.enter_async_context(anyio.create_task_group())
            assert process.stdout is not None
            group.start_soon(_pump, process.stdout, send)
            child = ChildProcess(name, process, log_path, receive)
            try:
                yield child
            finally:
                with anyio.CancelScope(shield=True):
                    if process.returncode is None:
                        process.kill()
                    await process.wait()
                    await process.aclose()
                group.cancel_scope.cancel()


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far (0 if it is gone)."""
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return float(times.user + times.system)


class RssSampler:
    """Samples a process's resident set size in the background; keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self._process = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self.cpu = 0.0

    def sample(self) -> None:
        """Take one sample now."""
        try:
            with self._process.oneshot():
                self.peak = max(self.peak, self._process.memory_info().rss)
                times = self._process.cpu_times()
                self.cpu = float(times.user + times.system)
        except psutil.Error:
            pass

    async def run(self) -> None:
        """Sample until cancelled."""
        while True:
            self.sample()
            await anyio.sleep(self.interval)


# --------------------------------------------------------------- server


@dataclass(frozen=True)
class BenchServer:
    """A running benchmark server: its URL, CA certificate and tokens."""

    url: str
    ca_cert: Path
    tokens: Mapping[str, str] = field(repr=False)
    log_dir: Path
    pid: int

    async def counts(self) -> dict[str, dict[str, int]]:
        """Requests so far per token label: ``{label: {"http": n, "ws": n}}``."""
        context = ssl.create_default_context(cafile=str(self.ca_cert))
        async with httpx.AsyncClient(verify=context) as http:
            response = await http.get(
                f"{self.url}/_bench/counts",
                headers={"authorization": f"Bearer {self.tokens['admin']}"},
            )
        response.raise_for_status()
        counts: dict[str, dict[str, int]] = response.json()
        return counts


def count_delta(
    before: Mapping[str, Mapping[str, int]], after: Mapping[str, Mapping[str, int]], label: str
) -> int:
    """HTTP requests plus WebSocket request messages of *label* between two snapshots."""
    old = before.get(label, {})
    new = after.get(label, {})
    return sum(new.get(kind, 0) - old.get(kind, 0) for kind in ("http", "ws"))


@asynccontextmanager
async def bench_server(
    log_dir: Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    db: Path | None = None,
) -> AsyncIterator[BenchServer]:
    """Start the embedded server (TLS, SQLite file, counting) in a child process.

    *env* is added to the child's environment (``BENCH_LAG_FILE``, for one).
    *db* is the SQLite file to open (kept afterwards); by default a new one
    in a temporary directory.
    """
    with tempfile.TemporaryDirectory(prefix="oada-bench-") as tmp:
        work = Path(tmp)
        logs = log_dir or work
        tokens = {label: secrets.token_urlsafe(24) for label in TOKEN_LABELS}
        config = work / "server.json"
        # The tokens reach the child through a private file, not argv or env.
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump({"tokens": tokens, "db": str(db or work / "oada.sqlite3"), "dir": tmp}, out)
        argv = [sys.executable, "-m", "bench.counted_server", str(config)]
        async with child_process("server", argv, env=dict(env or {}), log_dir=logs) as child:
            ready = await child.expect("ready", 60)
            yield BenchServer(
                url=f"https://127.0.0.1:{ready['port']}",
                ca_cert=Path(ready["ca"]),
                tokens=tokens,
                log_dir=logs,
                pid=child.pid,
            )
            await child.stop(10)
