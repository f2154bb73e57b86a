"""``oada-jobs demo``: an embedded OADA server, the example email service and a mix of jobs.

Everything runs in this one process: the embedded server (on a free port,
data in a SQLite file kept afterwards), the example service from
``examples/email_service.py`` and a live table of the jobs as they move from
pending to running to success or failure. It ends by itself in a few seconds
and says where every job was filed and how to look at it again.

Owns this command only. May use the framework, the server and
``cli/_common``; nothing but the ``cli`` package may import it.
"""

from __future__ import annotations

import importlib
import logging
import random
import shlex
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any

import anyio
import typer
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ..client import OADAClient
from ..exceptions import DatabaseLocked, ListenError
from ..job import Job
from ..service import Service
from ..testing import post_job
from ..tree import Layout, LayoutName, get_layout, resource_path, service_root
from ._app import app
from ._common import (
    CLIError,
    ExitCode,
    command,
    err_console,
    first_leaf,
    out_console,
    require_extra,
)
from ._job_lists import filed_paths, finished_at

#: The service the example defines.
SERVICE = "email-service"
#: The embedded server's development token.
TOKEN = "god"
#: Seconds the whole demo may take before it gives up.
DEADLINE = 45.0


@dataclass(frozen=True, slots=True)
class Kind:
    """A kind of demo job: what it asks for and how it should end."""

    name: str
    config: dict[str, Any]
    expect_status: str
    expect_fail_type: str | None = None


OK = Kind(
    "delivered",
    {"to": ["ada@example.org"], "subject": "Harvest report", "text": "Yield maps attached."},
    "success",
)
SLOW = Kind(
    "mail server hangs",
    {"to": ["ops@slow.example"], "subject": "Stuck", "text": "This server never answers."},
    "failure",
    "timeout",
)
BAD_CONFIG = Kind(
    "bad config",
    {"to": ["not-an-address"], "text": "no subject either"},
    "failure",
    "invalid-config",
)
REFUSED = Kind(
    "recipient refused",
    {"to": ["nobody@farm.invalid"], "subject": "Hello?", "text": "Nobody is here."},
    "failure",
    "recipient-refused",
)

# The first four cover every outcome; larger demos repeat a mostly-good mix.
_FIRST = (OK, SLOW, BAD_CONFIG, REFUSED)
_MORE = (OK, OK, REFUSED, OK, BAD_CONFIG, OK, SLOW, OK)


def job_kinds(count: int) -> list[Kind]:
    """The kinds of the *count* demo jobs."""
    kinds = list(_FIRST[:count])
    while len(kinds) < count:
        kinds.append(_MORE[(len(kinds) - len(_FIRST)) % len(_MORE)])
    return kinds


class DemoBackend:
    """The example's outbox backend with a mail server's delays.

    Sending takes a moment (so the table shows jobs running); recipients at
    ``slow.example`` hang forever, so their jobs hit the timeout.
    """

    def __init__(self, inner: Any, *, timeout: float, seed: int | None = None) -> None:
        self.inner = inner
        self.timeout = timeout
        self._random = random.Random(seed)

    async def send(self, message: EmailMessage) -> str:
        recipients = [str(address) for address in message.get_all("To", [])]
        if any(address.lower().endswith("@slow.example") for address in recipients):
            await anyio.sleep_forever()
        # Well inside the timeout, so only the hanging server times out.
        await anyio.sleep(self._random.uniform(0.1, 0.5) * min(self.timeout, 2.5))
        result: str = await self.inner.send(message)
        return result


def layout_name(value: str) -> LayoutName:
    """Check ``--layout``."""
    if value == "classic":
        return "classic"
    if value == "pending":
        return "pending"
    raise CLIError(f"--layout must be classic or pending, got {value!r}", ExitCode.USAGE)


#: Where an installed wheel ships the example (pyproject.toml's force-include).
SHIPPED_EXAMPLE = "oada_jobs.examples.email_service"


def load_example() -> ModuleType:
    """Import the example email service: the copy an installed package ships, else
    ``examples/email_service.py`` of the source checkout this module runs from."""
    try:
        return importlib.import_module(SHIPPED_EXAMPLE)
    except ModuleNotFoundError as error:
        if error.name not in ("oada_jobs.examples", SHIPPED_EXAMPLE):
            raise
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "examples" / "email_service.py").is_file():
        if str(checkout) not in sys.path:
            sys.path.insert(0, str(checkout))
        return importlib.import_module("examples.email_service")
    raise CLIError(
        f"the demo runs the example email service, which this installation lacks "
        f"(no {SHIPPED_EXAMPLE}); reinstall oada-jobs from its wheel",
        ExitCode.FAILED,
    )


@dataclass(slots=True)
class Tracked:
    """What the demo knows about one posted job."""

    number: int
    kind: Kind
    job_id: str
    key: str
    posted: float
    status: str = "pending"
    note: str = ""
    finished: float | None = None
    filed: bool = False
    job: Job[Any] | None = field(default=None, repr=False)

    @property
    def done(self) -> bool:
        return self.finished is not None and self.filed

    @property
    def as_expected(self) -> bool:
        if self.job is None or self.status != self.kind.expect_status:
            return False
        result = self.job.result
        fail_type = result.get("failType") if isinstance(result, Mapping) else None
        return fail_type == self.kind.expect_fail_type


_COLOURS = {"success": "green", "failure": "red", "running": "yellow", "pending": "cyan"}


def _status(tracked: Tracked) -> Text:
    return Text(tracked.status, style=_COLOURS.get(tracked.status, "white"))


def _elapsed(tracked: Tracked, now: float) -> str:
    end = tracked.finished if tracked.finished is not None else now
    return f"{end - tracked.posted:4.1f} s"


def render(jobs: list[Tracked], title: str) -> Table:
    """The live table."""
    now = time.monotonic()
    table = Table(title=title, title_justify="left")
    table.add_column("#", justify="right", no_wrap=True, min_width=2)
    table.add_column("job", no_wrap=True, min_width=7)
    table.add_column("what happens", no_wrap=True, min_width=17)
    table.add_column("status", no_wrap=True, min_width=7)
    table.add_column("time", justify="right", no_wrap=True, min_width=6)
    width = max(16, min(60, out_console.width - 64))
    table.add_column("latest update", overflow="ellipsis", no_wrap=True, max_width=width)
    for tracked in jobs:
        table.add_row(
            str(tracked.number),
            "…" + tracked.key[-6:],
            tracked.kind.name,
            _status(tracked),
            _elapsed(tracked, now),
            escape(tracked.note),
        )
    return table


def _note(job: Job[Any]) -> str:
    updates = [value for value in job.updates.values() if isinstance(value, Mapping)]
    if not updates:
        return ""
    last = max(updates, key=lambda update: str(update.get("time", "")))
    meta = last.get("meta")
    text = meta if isinstance(meta, str) else "" if meta is None else str(meta)
    return f"{last.get('status')}: {text}".rstrip(": ")


async def _follow_job(oada: OADAClient, tracked: Tracked) -> None:
    """Keep *tracked* up to date until its job has finished."""
    path = resource_path(tracked.job_id)

    def refresh(data: Any) -> None:
        job = Job.from_resource(data, oada_id=tracked.job_id, key=tracked.key)
        tracked.job = job
        tracked.status = job.status or "pending"
        tracked.note = _note(job)
        if job.finished and tracked.finished is None:
            tracked.finished = time.monotonic()

    response = await oada.get(path)
    refresh(response.data)
    if tracked.finished is not None:
        return
    async with oada.watch(path, rev=response.rev) as changes:
        async for _change in changes:
            # Re-read instead of patching from the change: simple, and the
            # table shows exactly what is stored.
            refresh((await oada.get(path)).data)
            if tracked.finished is not None:
                return


async def _follow_pending(oada: OADAClient, pending_path: str, jobs: list[Tracked]) -> None:
    """Mark jobs filed once they left the pending list; return when all did."""

    def refresh(listing: Any) -> bool:
        keys = set(listing) if isinstance(listing, Mapping) else set()
        for tracked in jobs:
            if tracked.key not in keys and tracked.finished is not None:
                tracked.filed = True
        return all(tracked.done for tracked in jobs)

    response = await oada.get(pending_path)
    if refresh(response.data):
        return
    async with oada.watch(pending_path, rev=response.rev) as changes:
        async for _change in changes:
            if refresh((await oada.get(pending_path)).data):
                return


def _summary(jobs: list[Tracked], layout_name: LayoutName) -> Table:
    """The final table: the live one's columns with where each job was filed, one
    line per job, so the whole of it stays on a 30-line screen with what follows."""
    layout = get_layout(layout_name)
    root = f"{service_root(SERVICE)}/"
    filed = {tracked.number: _filed_under(tracked, layout, root) for tracked in jobs}
    days = {day for _, day in filed.values() if day}
    title = f"where each job was filed, below {root}"
    if len(days) == 1:
        title += f" (day-index/{days.pop()})"
    table = Table(title=title, title_justify="left")
    table.add_column("#", justify="right", no_wrap=True, min_width=2)
    table.add_column("job", no_wrap=True, min_width=7)
    table.add_column("what happens", no_wrap=True, min_width=17)
    table.add_column("time", justify="right", no_wrap=True, min_width=6)
    # The list tells the status, the typed-failure list a failure's type.
    table.add_column("filed under", overflow="fold")
    now = time.monotonic()
    for tracked in jobs:
        table.add_row(
            str(tracked.number),
            "…" + tracked.key[-6:],
            tracked.kind.name,
            _elapsed(tracked, now),
            Text(filed[tracked.number][0], style=_COLOURS.get(tracked.status, "white")),
        )
    return table


def _filed_under(tracked: Tracked, layout: Layout, root: str) -> tuple[str, str | None]:
    """The lists a job was filed in, below *root* and without their day, and the day."""
    job = tracked.job
    day = finished_at(job) if job is not None else None
    paths = filed_paths(job, layout) if job is not None else []
    if not paths or day is None:
        return "(not filed)", None
    suffix = f"/day-index/{day}"
    return " + ".join(path.removeprefix(root).removesuffix(suffix) for path in paths), str(day)


def _how_to_look(
    jobs: list[Tracked], db: Path, outbox: Path, url: str | None, layout_name: LayoutName
) -> str:
    layout = get_layout(layout_name)
    failed = next((t for t in jobs if t.status == "failure"), jobs[0])
    done = [t for t in jobs if t.job is not None]
    day_paths = filed_paths(done[0].job, layout) if done and done[0].job is not None else []
    base = url or "http://127.0.0.1:8080"
    lines = []
    if url is None:
        lines += [
            "To look at the jobs again, start the server on the demo's data in another terminal:",
            f"  oada-jobs serve --db {shlex.quote(str(db))} --port 8080",
        ]
    else:
        lines += [f"The server is still running at {url} (Ctrl-C to stop). Try:"]
    lines += [
        f"  export OADA_DOMAIN={base} OADA_TOKEN={TOKEN} OADA_JOBS_SERVICE={SERVICE}",
        "  oada-jobs jobs list",
        f"  oada-jobs jobs show {failed.job_id}",
        f"  oada-jobs jobs retry {failed.job_id}   # posts its config again as a new job",
        "  oada-jobs dashboard   # the jobs in a browser, on http://127.0.0.1:8300",
    ]
    if day_paths:
        lines.append(f"  curl -H 'Authorization: Bearer {TOKEN}' {base}{day_paths[0]}")
    lines.append(f"Messages the example 'sent' are in {outbox}")
    return "\n".join(lines)


@command(app, "demo")
def demo(
    jobs: Annotated[int, typer.Option("--jobs", "-n", min=1, max=200, help="Jobs to post.")] = 8,
    timeout: Annotated[
        float,
        typer.Option(min=0.5, max=20, help="Seconds an email job may run in the demo."),
    ] = 2.0,
    directory: Annotated[
        Path | None,
        typer.Option(
            "--dir",
            help="Keep the demo's database, outbox and log here (default: a new temporary "
            "directory).",
        ),
    ] = None,
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="Server port (0: any free port).")
    ] = 0,
    keep_running: Annotated[
        bool,
        typer.Option("--keep-running", help="Keep the server and service running until Ctrl-C."),
    ] = False,
    layout: Annotated[str, typer.Option(help="Job-list layout: classic or pending.")] = "classic",
    seed: Annotated[int | None, typer.Option(help="Seed for the simulated send delays.")] = None,
) -> None:
    """Start an embedded OADA server and the example email service, post a mix of jobs
    (delivered, refused, bad config, timing out) and watch them finish.

    Needs nothing else running; ends by itself in a few seconds.
    """
    require_extra("server", "demo")
    chosen = layout_name(layout)
    example = load_example()
    files = _DemoFiles.in_directory(directory)
    kinds = job_kinds(jobs)
    with _service_log_in(files.log):
        example.use_backend(
            DemoBackend(example.OutboxBackend(files.outbox), timeout=timeout, seed=seed)
        )
        try:
            ok = anyio.run(_demo, example, kinds, timeout, files, port, keep_running, chosen)
        except BaseException as error:
            # --port taken, or --dir used by a demo still running: one line.
            leaf = first_leaf(error)
            if isinstance(leaf, ListenError | DatabaseLocked):
                message = f"the demo cannot start its server: {leaf}"
                raise CLIError(message, ExitCode.FAILED) from None
            raise
        finally:
            example.use_backend(None)
    if not ok:
        raise CLIError(f"some jobs did not end as expected; see {files.log}", ExitCode.FAILED)


@dataclass(frozen=True, slots=True)
class _DemoFiles:
    """Where the demo keeps its server's database, the outbox and the service's log."""

    db: Path
    outbox: Path
    log: Path

    @classmethod
    def in_directory(cls, directory: Path | None) -> _DemoFiles:
        """The files in *directory* (created if need be), default a new temporary one."""
        where = directory or Path(tempfile.mkdtemp(prefix="oada-jobs-demo-"))
        try:
            where.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise CLIError(f"cannot use --dir {where}: {error.strerror}", ExitCode.USAGE) from None
        return cls(where / "oada.sqlite", where / "outbox", where / "service.log")


@contextmanager
def _service_log_in(log_file: Path) -> Iterator[None]:
    """Send the service's, the server's and the client's log to *log_file*
    meanwhile, so the live table stays readable."""
    handler = logging.FileHandler(log_file, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    quiet = [logging.getLogger(name) for name in ("oada_jobs", "uvicorn", "httpx")]
    saved = [(log, log.level, log.propagate) for log in quiet]
    for log in quiet:
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    try:
        yield
    finally:
        for log, level, propagate in saved:
            log.removeHandler(handler)
            log.setLevel(level)
            log.propagate = propagate
        handler.close()


async def _demo(
    example: ModuleType,
    kinds: list[Kind],
    job_timeout: float,
    files: _DemoFiles,
    port: int,
    keep_running: bool,
    layout: LayoutName,
) -> bool:
    from ..testing import embedded_server

    out_console.print(
        f"[bold]oada-jobs demo[/]: {len(kinds)} email jobs, timeout {job_timeout:g} s"
    )
    async with embedded_server(db=files.db, port=port or None) as server:
        out_console.print(f"  embedded OADA server  {server.url}  (token {server.token})")
        service = Service(SERVICE, domain=server.url, token=server.token, layout=layout)
        service.on("email", job_timeout, example.send_email)
        async with service, OADAClient(server.url, server.token) as oada:
            out_console.print(
                f"  example service       {SERVICE} ({example.__name__})\n"
                f"  its log               {files.log}"
            )
            started = time.monotonic()
            tracked = await _post_jobs(oada, kinds, layout, started)
            completed = await _watch(oada, tracked, service.layout.pending_path(SERVICE))
            expected = _print_outcome(tracked, layout, completed, time.monotonic() - started)
            url = server.url if keep_running else None
            look = _how_to_look(tracked, files.db, files.outbox, url, layout)
            out_console.print(look, highlight=False, markup=False)
            if keep_running:
                await _wait_for_interrupt()
            return completed and expected == len(tracked)


async def _post_jobs(
    oada: OADAClient, kinds: list[Kind], layout: LayoutName, started: float
) -> list[Tracked]:
    tracked: list[Tracked] = []
    for number, kind in enumerate(kinds, start=1):
        job_id = await post_job(oada, SERVICE, "email", kind.config, layout=layout)
        key = job_id.removeprefix("resources/")
        tracked.append(Tracked(number, kind, job_id, key, started))
    return tracked


async def _watch(oada: OADAClient, tracked: list[Tracked], pending_path: str) -> bool:
    """Follow the jobs in a live table until all are filed; ``False`` when
    they were not within :data:`DEADLINE`."""
    title = f"jobs posted to {pending_path}"
    with Live(
        render(tracked, title),
        console=out_console,
        refresh_per_second=8,
        get_renderable=lambda: render(tracked, title),
        # The summary below replaces it: both would not fit a 30-line screen.
        transient=True,
    ):
        with anyio.move_on_after(DEADLINE):
            async with anyio.create_task_group() as group:
                for item in tracked:
                    group.start_soon(_follow_job, oada, item)
                group.start_soon(_follow_pending, oada, pending_path, tracked)
            return True
    return False


def _print_outcome(tracked: list[Tracked], layout: LayoutName, completed: bool, took: float) -> int:
    """Print where each job was filed and the counts; returns how many jobs
    ended as expected."""
    if not completed:
        err_console.print(f"[red]the jobs did not all finish within {DEADLINE:g} s[/]")
    out_console.print(_summary(tracked, layout))
    expected = sum(item.as_expected for item in tracked)
    out_console.print(
        f"{len(tracked)} jobs in {took:.1f} s: "
        f"{sum(t.status == 'success' for t in tracked)} succeeded, "
        f"{sum(t.status == 'failure' for t in tracked)} failed, "
        f"{expected} of {len(tracked)} as expected."
    )
    return expected


async def _wait_for_interrupt() -> None:
    import signal

    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _signal in signals:
            return


__all__ = ["SHIPPED_EXAMPLE", "DemoBackend", "Kind", "job_kinds", "load_example", "render"]
