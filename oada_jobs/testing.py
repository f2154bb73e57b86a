"""Test helpers: run an embedded OADA server for the duration of a test.

>>> async with embedded_server() as server:  # doctest: +SKIP
...     async with OADAClient(server.url, server.token) as oada:
...         await oada.put("/bookmarks/x", {"a": 1})

Two modes:

* **in-process** (default): uvicorn runs in a task of the current event
  loop; fast, and :attr:`EmbeddedServer.core` gives direct access to the
  core.
* **subprocess** (``subprocess=True``): ``python -m oada_jobs serve`` in a
  child process, for fault tests: :meth:`EmbeddedServer.kill` sends SIGKILL
  and :meth:`EmbeddedServer.restart` starts it again on the same port and
  database.

Both wait until the server really answers before yielding, and stop it
(and remove temporary files) afterwards.

For testing job services, :func:`post_job` posts a job into a service's
pending list and :func:`wait_for_job` waits (watching, never polling) until
it has finished.

This module imports in any install; :func:`embedded_server` needs the
``server`` extra (``pip install 'oada-jobs[server]'``).

Length: ``embedded_server`` is mostly its keyword options: each
:class:`ServerConfig` limit a test may override, declared in the signature
and passed on by name in one table. The work is done by ``_server_config``
and ``_serve``.

Owns helpers for tests of services. May use the server, the client and the
requester side; nothing in the framework may import it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import ssl
import subprocess as _subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import anyio
import httpx
from anyio.abc import ByteReceiveStream, Process, TaskGroup

from oada_jobs._extras import require
from oada_jobs._retry import exponential, retry
from oada_jobs.job import Job
from oada_jobs.requester import post_job, wait_for_outcome
from oada_jobs.server.config import DEFAULT_TOKENS, ServerConfig, TokenInfo
from oada_jobs.tree import LayoutName, get_layout, resource_path
from oada_jobs.types import JsonObject

if TYPE_CHECKING:
    from oada_jobs.client import OADAClient
    from oada_jobs.server.core import OADACore

__all__ = [
    "EmbeddedServer",
    "embedded_server",
    "post_job",
    "single_user_tokens",
    "wait_for_job",
    "wait_until_filed",
]

#: Seconds a subprocess server may take to start answering.
START_TIMEOUT = 30.0

_URL_LINE = re.compile(rb"listening on (https?://\S+?)/?\s")


def single_user_tokens(tokens: Sequence[str]) -> dict[str, TokenInfo]:
    """Map every token to the default development user (sam) with ``all:all``.

    This is what ``oada-jobs serve --token`` does.
    """
    sam = DEFAULT_TOKENS["god"]
    return dict.fromkeys(tokens, sam)


@dataclass(slots=True)
class EmbeddedServer:
    """A running embedded server, as yielded by :func:`embedded_server`."""

    #: Base URL, e.g. ``http://127.0.0.1:41234``.
    url: str
    #: ``host:port`` (what OADA clients call the domain, without a scheme).
    domain: str
    #: A token with ``all:all`` for the default user (``god`` by default).
    token: str = field(repr=False)
    #: Every configured token.
    tokens: tuple[str, ...] = field(repr=False)
    #: The settings the server runs with (tokens included: kept out of the repr).
    config: ServerConfig = field(repr=False)
    #: CA certificate to trust when TLS is on, else None (see :meth:`ssl_context`).
    ca_cert: Path | None = None
    #: The core (in-process mode only; None for a subprocess).
    core: OADACore | None = None
    _proc: _Child | None = field(default=None, repr=False)

    @property
    def port(self) -> int:
        """The TCP port."""
        return int(self.domain.rsplit(":", 1)[1])

    @property
    def ws_url(self) -> str:
        """The WebSocket endpoint, e.g. ``ws://127.0.0.1:41234/``."""
        return self.url.replace("http", "ws", 1) + "/"

    def ssl_context(self) -> ssl.SSLContext:
        """A client context trusting this server's certificate (``verify=`` for httpx).

        Raises ``RuntimeError`` when the server runs without TLS.
        """
        if self.ca_cert is None:
            raise RuntimeError("the server runs without TLS; use embedded_server(tls=True)")
        return ssl.create_default_context(cafile=str(self.ca_cert))

    @property
    def pid(self) -> int | None:
        """The server process id in subprocess mode."""
        return self._proc.pid if self._proc is not None else None

    async def kill(self) -> None:
        """SIGKILL the server process (subprocess mode) and wait until it is gone."""
        await self._child().kill()

    async def restart(self) -> None:
        """Start the server again on the same port and database.

        After :meth:`kill` it just starts; a running server is first stopped
        gracefully (SIGTERM).
        """
        child = self._child()
        await child.stop()
        await child.start()

    def _child(self) -> _Child:
        if self._proc is None:
            raise RuntimeError("kill() and restart() need embedded_server(subprocess=True)")
        return self._proc


class _Child:
    """The ``oada-jobs serve`` child process of a subprocess-mode server."""

    def __init__(
        self,
        args: list[str],
        env: dict[str, str],
        probe: httpx.AsyncClient,
        task_group: TaskGroup,
    ) -> None:
        self._args = args
        self._env = env
        self._probe = probe
        self._task_group = task_group
        self._process: Process | None = None
        self.url = ""
        self._log = b""

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def start(self, port: int | None = None) -> None:
        if self._process is not None and self._process.returncode is None:
            raise RuntimeError("the server process is still running; kill() it first")
        args = list(self._args)
        if port is not None:
            args += ["--port", str(port)]
        elif self.url:
            args += ["--port", self.url.rsplit(":", 1)[1]]
        else:
            args += ["--port", "0"]
        self._process = await anyio.open_process(
            args, env=self._env, stdin=_subprocess.DEVNULL, stderr=_subprocess.STDOUT
        )
        with anyio.fail_after(START_TIMEOUT):
            self.url = await self._read_url()
            await self._wait_answering()

    async def _read_url(self) -> str:
        """Read the child's output until it says where it listens."""
        process = self._process
        assert process is not None
        assert process.stdout is not None
        buffer = b""
        async for chunk in process.stdout:
            buffer += chunk
            match = _URL_LINE.search(buffer)
            if match:
                self._log = buffer
                # Keep reading, or a chatty server would block on a full pipe.
                self._task_group.start_soon(self._drain, process.stdout)
                return match.group(1).decode()
        await process.wait()
        raise RuntimeError(
            f"the server process exited with {process.returncode} before listening:\n"
            + buffer.decode(errors="replace")
        )

    async def _drain(self, stdout: ByteReceiveStream) -> None:
        """Read the child's output until it ends, keeping the last 64 KiB."""
        with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            async for chunk in stdout:
                self._log = (self._log + chunk)[-65536:]

    @property
    def output(self) -> str:
        """The end of what the child printed (for failure messages)."""
        return self._log.decode(errors="replace")

    async def _wait_answering(self) -> None:
        """Poll ``HEAD /bookmarks`` until the server answers at all."""

        def exited() -> bool:
            return self._process is not None and self._process.returncode is not None

        try:
            await retry(
                lambda: self._probe.head(f"{self.url}/bookmarks"),
                retryable=lambda error: isinstance(error, httpx.TransportError) and not exited(),
                delay=exponential(0.01, 0.2),
            )
        except httpx.TransportError:
            raise RuntimeError("the server process exited during start-up") from None

    async def kill(self) -> None:
        process = self._process
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGKILL)
        await process.wait()
        await self._close_pipes()

    async def stop(self) -> None:
        """Graceful stop (SIGTERM), escalating to SIGKILL."""
        process = self._process
        if process is None:
            return
        if process.returncode is None:
            process.terminate()
            with anyio.move_on_after(10):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()
        await self._close_pipes()

    async def _close_pipes(self) -> None:
        if self._process is not None:
            await self._process.aclose()


def _resolve_tokens(tokens: Sequence[str] | Mapping[str, TokenInfo] | None) -> dict[str, TokenInfo]:
    if tokens is None:
        return dict(DEFAULT_TOKENS)
    if isinstance(tokens, str):
        raise TypeError("tokens must be a sequence of strings or a mapping, not one string")
    if isinstance(tokens, Mapping):
        return dict(tokens)
    return single_user_tokens(tokens)


@asynccontextmanager
async def embedded_server(
    *,
    db: str | os.PathLike[str] = ":memory:",
    tokens: Sequence[str] | Mapping[str, TokenInfo] | None = None,
    quirks: Literal["none", "reference"] = "none",
    tls: bool = False,
    subprocess: bool = False,
    port: int | None = None,
    max_body_bytes: int | None = None,
    ws_ping_interval: float | None = None,
    document_cache_size: int | None = None,
    document_cache_bytes: int | None = None,
    change_cache_bytes: int | None = None,
    ws_send_buffer_bytes: int | None = None,
    ws_send_buffer_total_bytes: int | None = None,
    max_connections: int | None = None,
    max_watches_per_socket: int | None = None,
    max_watches: int | None = None,
    max_header_bytes: int | None = None,
    request_read_timeout: float | None = None,
    max_changes_listed: int | None = None,
    max_body_items: int | None = None,
) -> AsyncIterator[EmbeddedServer]:
    """Run an embedded OADA server on 127.0.0.1 while the block runs.

    :param db: SQLite file, or ``":memory:"``. In subprocess mode ``":memory:"``
        becomes a file in a temporary directory, so :meth:`EmbeddedServer.restart`
        keeps the data.
    :param tokens: ``None`` for the development tokens (``god``, ``abc``); a list of
        tokens that all stand for the default user with ``all:all``; or a
        mapping token → :class:`~oada_jobs.server.config.TokenInfo`
        (a subprocess gets them through a private ``--tokens-file``).
    :param quirks: ``"none"`` or ``"reference"`` (see :class:`ServerConfig`).
    :param tls: Serve HTTPS/WSS with a generated development certificate; trust
        :attr:`EmbeddedServer.ca_cert`.
    :param subprocess: Run the server in a child process (for kill/restart tests).
    :param port: Fixed port; a free one when ``None``.
    Every other argument overrides the :class:`ServerConfig` limit of the
    same name (``None`` keeps its default): body, header, cache and
    send-buffer bytes, connections, watches, listed changes, body items,
    the ping interval and the request read timeout.

    >>> async with embedded_server(subprocess=True, db=tmp_path / "oada.sqlite") as s:  # doctest: +SKIP
    ...     await s.kill()
    ...     await s.restart()
    """
    require("server", "oada_jobs.testing.embedded_server()")
    limits = {
        "max_body_bytes": max_body_bytes,
        "ws_ping_interval": ws_ping_interval,
        "document_cache_size": document_cache_size,
        "document_cache_bytes": document_cache_bytes,
        "change_cache_bytes": change_cache_bytes,
        "ws_send_buffer_bytes": ws_send_buffer_bytes,
        "ws_send_buffer_total_bytes": ws_send_buffer_total_bytes,
        "max_connections": max_connections,
        "max_watches_per_socket": max_watches_per_socket,
        "max_watches": max_watches,
        "max_header_bytes": max_header_bytes,
        "request_read_timeout": request_read_timeout,
        "max_changes_listed": max_changes_listed,
        "max_body_items": max_body_items,
    }
    token_map = _resolve_tokens(tokens)
    if not token_map:
        raise ValueError("at least one token is needed")
    tmp = Path(tempfile.mkdtemp(prefix="oada-embedded-"))
    try:
        if subprocess and os.fspath(db) == ":memory:":
            # A file, so that restart() keeps the data.
            db = tmp / "oada.sqlite"
        config = _server_config(db, token_map, quirks, limits)
        cert_dir = tmp / "tls" if tls else None
        async with _serve(
            config, cert_dir, subprocess=subprocess, port=port, workdir=tmp
        ) as server:
            yield server
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _server_config(
    db: str | os.PathLike[str],
    tokens: dict[str, TokenInfo],
    quirks: Literal["none", "reference"],
    limits: Mapping[str, float | None],
) -> ServerConfig:
    """The configuration of an embedded server; limits given as ``None`` keep their default."""
    given = {name: value for name, value in limits.items() if value is not None}
    return ServerConfig.model_validate(
        {"db": os.fspath(db), "tokens": tokens, "quirks": quirks, **given}
    )


@asynccontextmanager
async def _serve(
    config: ServerConfig,
    cert_dir: Path | None,
    *,
    subprocess: bool,
    port: int | None,
    workdir: Path,
) -> AsyncIterator[EmbeddedServer]:
    """Serve *config* in this process or a child, with a development certificate
    made in *cert_dir* (``None``: plain HTTP)."""
    cert = None
    if cert_dir is not None:
        from oada_jobs.server.tls import self_signed

        cert = self_signed(cert_dir)
    server_cm: AbstractAsyncContextManager[tuple[str, OADACore | None, _Child | None]]
    if subprocess:
        server_cm = _subprocess_server(config, cert_dir=cert_dir, port=port, workdir=workdir)
    else:
        server_cm = _in_process_server(config, cert_dir=cert_dir, port=port)
    async with server_cm as (url, core, child):
        yield EmbeddedServer(
            url=url,
            domain=url.split("://", 1)[1],
            token="god" if "god" in config.tokens else next(iter(config.tokens)),
            tokens=tuple(config.tokens),
            config=config,
            ca_cert=cert.ca_cert if cert is not None else None,
            core=core,
            _proc=child,
        )


@asynccontextmanager
async def _in_process_server(
    config: ServerConfig, *, cert_dir: Path | None, port: int | None
) -> AsyncIterator[tuple[str, OADACore | None, _Child | None]]:
    from oada_jobs.server.runner import serve

    async with anyio.create_task_group() as tg:
        handle = await tg.start(
            partial(
                serve,
                config,
                host="127.0.0.1",
                port=port or 0,
                ssl_certfile=cert_dir / "cert.pem" if cert_dir else None,
                ssl_keyfile=cert_dir / "key.pem" if cert_dir else None,
                graceful_timeout=2.0,
            )
        )
        try:
            yield handle.url, handle.core, None
        finally:
            handle.shutdown()


@asynccontextmanager
async def _subprocess_server(
    config: ServerConfig, *, cert_dir: Path | None, port: int | None, workdir: Path
) -> AsyncIterator[tuple[str, OADACore | None, _Child | None]]:
    args = [sys.executable, "-m", "oada_jobs", "serve", "--host", "127.0.0.1", "--db", config.db]
    args += ["--quirks", config.quirks, "--max-body-bytes", str(config.max_body_bytes)]
    args += ["--ws-ping-interval", str(config.ws_ping_interval)]
    args += ["--document-cache-size", str(config.document_cache_size)]
    args += ["--document-cache-bytes", str(config.document_cache_bytes)]
    args += ["--change-cache-bytes", str(config.change_cache_bytes)]
    args += ["--ws-send-buffer-bytes", str(config.ws_send_buffer_bytes)]
    args += ["--ws-send-buffer-total-bytes", str(config.ws_send_buffer_total_bytes)]
    args += ["--max-connections", str(config.max_connections)]
    args += ["--max-watches-per-socket", str(config.max_watches_per_socket)]
    args += ["--max-watches", str(config.max_watches)]
    args += ["--max-header-bytes", str(config.max_header_bytes)]
    args += ["--request-read-timeout", str(config.request_read_timeout)]
    args += ["--max-changes-listed", str(config.max_changes_listed)]
    args += ["--max-body-items", str(config.max_body_items)]
    if cert_dir is not None:
        args += ["--tls-cert", str(cert_dir / "cert.pem"), "--tls-key", str(cert_dir / "key.pem")]
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("OADA_JOBS_SERVE_TOKENS", None)
    if config.tokens != DEFAULT_TOKENS:
        # Through a private file, so tokens never show up in `ps`.
        tokens_file = workdir / "tokens.json"
        fd = os.open(tokens_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({t: info.model_dump() for t, info in config.tokens.items()}, f)
        args += ["--tokens-file", str(tokens_file)]
    verify: ssl.SSLContext | bool = True
    if cert_dir is not None:
        verify = ssl.create_default_context(cafile=str(cert_dir / "ca.pem"))
    async with (
        httpx.AsyncClient(verify=verify, timeout=5.0) as probe,
        anyio.create_task_group() as tg,
    ):
        child = _Child(args, env, probe, tg)
        try:
            await child.start(port)
            yield child.url, None, child
        finally:
            with anyio.CancelScope(shield=True):
                await child.stop()


# --------------------------------------------------------------------------
# Jobs: post one and wait for its outcome (for testing services).


async def wait_for_job(
    oada: OADAClient,
    job_id: str,
    timeout: float = 30.0,  # noqa: ASYNC109 -- a bounded wait is what a test helper is for
    *,
    filed: LayoutName | None = None,
) -> Job[JsonObject]:
    """Wait (watching, not polling) until the job is ``success`` or ``failure``.

    With *filed* (the service's layout) it also waits until the runner has
    removed the job from the pending list, i.e. it is completely filed.
    Raises :class:`TimeoutError` after *timeout* seconds.

    >>> job = await wait_for_job(oada, job_id, 10)  # doctest: +SKIP
    >>> job.status, job.result  # doctest: +SKIP
    """
    with anyio.fail_after(timeout):
        job = await wait_for_outcome(oada, job_id)
        if filed is not None:
            job = await wait_until_filed(oada, job, filed)
    return job


async def wait_until_filed(
    oada: OADAClient, job: Job[JsonObject], layout: LayoutName
) -> Job[JsonObject]:
    """Finished *job* read again once its runner has taken it off *layout*'s
    pending list, the last step of filing it (any list read after shows it).

    Waits as long as that takes (watching, not polling): bound it with a
    cancel scope.
    """
    await _wait_unlisted(oada, get_layout(layout).pending_path(job.service), job.oada_id)
    # Read again: a runner may add its last update after the status.
    response = await oada.get(resource_path(job.oada_id))
    return Job.from_resource(response.data, oada_id=job.oada_id, etag=response.etag)


async def _wait_unlisted(oada: OADAClient, list_path: str, job_id: str) -> None:
    key = job_id.removeprefix("resources/")
    listing = await oada.get(list_path)
    if not isinstance(listing.data, Mapping) or key not in listing.data:
        return
    async with oada.watch(list_path, rev=listing.rev) as changes:
        async for change in changes:
            body = change.body or {}
            if change.path in ("", "/") and change.type == "delete" and key in body:
                return
