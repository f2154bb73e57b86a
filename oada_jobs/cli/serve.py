"""``oada-jobs serve``: run the embedded OADA server.

Owns this command only. May use the server and ``cli/_common``; nothing but
the ``cli`` package may import it.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import platform
from enum import StrEnum
from functools import partial
from pathlib import Path
from typing import Annotated

import anyio
import typer
from pydantic import ValidationError

from oada_jobs._loop import run as run_process
from oada_jobs.exceptions import DatabaseLocked
from oada_jobs.server.config import DEFAULT_TOKENS, ServerConfig, TokenInfo

from ._app import app
from ._common import first_leaf, require_extra

__all__ = ["serve_command"]

#: Environment variable with whitespace-separated tokens (keeps them out of `ps`).
TOKENS_ENV = "OADA_JOBS_SERVE_TOKENS"

_LOOPBACK = ("127.0.0.1", "localhost", "::1")

#: glibc's ``M_MMAP_THRESHOLD`` (malloc.h) and the value the server fixes it at.
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_BYTES = 128 * 1024


def _return_large_buffers_to_the_os() -> None:
    """Have glibc give every allocation over 128 KiB a mapping of its own.

    glibc raises that threshold each time such a block is freed (up to
    32 MiB) and then serves large blocks from its heap, which it keeps when
    they are freed: after a burst of one-MiB messages the server's RSS stayed
    at its peak although the memory was free. With the threshold fixed, a
    freed buffer goes back to the OS at once. Left alone where the C library
    is not glibc, or where the environment already tunes it.
    """
    if platform.libc_ver()[0] != "glibc":
        return
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "GLIBC_TUNABLES" in os.environ:
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)


class Quirks(StrEnum):
    """Values of ``--quirks``."""

    #: Behave as the protocol recommends for an embedded server.
    none = "none"
    #: Imitate the reference server where clients can see a difference.
    reference = "reference"


def _tokens(tokens: list[str]) -> dict[str, TokenInfo]:
    if not tokens:
        return dict(DEFAULT_TOKENS)
    sam = DEFAULT_TOKENS["god"]
    return dict.fromkeys(tokens, sam)


def _tokens_file(path: Path) -> dict[str, TokenInfo]:
    """Read ``{token: {user, bookmarks, shares?, scopes?}}``; errors never quote a token."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(f"cannot read {path}: {exc}", param_hint="--tokens-file") from None
    if not isinstance(raw, dict) or not raw:
        raise typer.BadParameter(
            f"expected a non-empty JSON object token → user in {path}", param_hint="--tokens-file"
        )
    tokens: dict[str, TokenInfo] = {}
    for index, (token, info) in enumerate(raw.items(), start=1):
        try:
            tokens[token] = TokenInfo.model_validate(info)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'entry'}: {e['msg']}" for e in exc.errors()
            )
            raise typer.BadParameter(
                f"entry {index} of {path} is not a valid user: {problems}",
                param_hint="--tokens-file",
            ) from None
    return tokens


def _token_hint(tokens: dict[str, TokenInfo]) -> str:
    """Say which tokens work without printing any secret one."""
    if tokens == DEFAULT_TOKENS:
        return "tokens: god (development token, user sam), abc (development token, user frank)"
    if any(info != DEFAULT_TOKENS["god"] for info in tokens.values()):
        users = sorted({info.user for info in tokens.values()})
        return f"tokens: {len(tokens)} configured (not shown) for {', '.join(users)}"
    shown = [t for t in tokens if t == "god"]
    hidden = len(tokens) - len(shown)
    parts = ["god (development token)"] if shown else []
    if hidden:
        parts.append(f"{hidden} token(s) from --token/{TOKENS_ENV} (not shown)")
    return "tokens: " + ", ".join(parts) + "; all for user sam with scope all:all"


@app.command("serve")
def serve_command(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="TCP port (0 picks a free one).")
    ] = 8080,
    db: Annotated[
        str, typer.Option(help='SQLite database file, or ":memory:" for a throw-away one.')
    ] = "oada.sqlite",
    token: Annotated[
        list[str] | None,
        typer.Option(
            "--token",
            envvar=TOKENS_ENV,
            help="Accept this bearer token for the default user with scope all:all "
            "(repeatable). Default: the development tokens god and abc.",
            show_default=False,
        ),
    ] = None,
    tokens_file: Annotated[
        Path | None,
        typer.Option(
            help='JSON file {"<token>": {"user": "users/x", "bookmarks": "resources/x_bm", '
            '"scopes": ["all:all"]}} for several users (added to --token).',
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    quirks: Annotated[
        Quirks, typer.Option(help="'reference' imitates the reference OADA server's quirks.")
    ] = Quirks.none,
    tls_cert: Annotated[
        Path | None, typer.Option(help="PEM certificate (chain) for HTTPS/WSS.", exists=True)
    ] = None,
    tls_key: Annotated[
        Path | None, typer.Option(help="PEM private key for --tls-cert.", exists=True)
    ] = None,
    tls_self_signed: Annotated[
        bool,
        typer.Option(
            help="Serve HTTPS/WSS with a generated development certificate "
            "(its CA file is printed; trust it in clients)."
        ),
    ] = False,
    tls_dir: Annotated[
        Path | None,
        typer.Option(help="Where --tls-self-signed writes its files (default: a temp dir)."),
    ] = None,
    max_body_bytes: Annotated[
        int, typer.Option(min=1, help="Largest accepted request body; larger ones get 413.")
    ] = ServerConfig.model_fields["max_body_bytes"].default,
    max_depth: Annotated[
        int,
        typer.Option(
            min=2, max=512, help="Deepest accepted JSON nesting (counting the path); deeper: 400."
        ),
    ] = ServerConfig.model_fields["max_depth"].default,
    max_body_items: Annotated[
        int,
        typer.Option(
            min=100,
            help="Most JSON items (strings and commas between values) in a body; more: 413.",
        ),
    ] = ServerConfig.model_fields["max_body_items"].default,
    max_path_bytes: Annotated[
        int, typer.Option(min=256, help="Longest accepted request path in bytes; longer: 414.")
    ] = ServerConfig.model_fields["max_path_bytes"].default,
    replay_slice: Annotated[
        float,
        typer.Option(
            min=0.0001,
            help="Seconds a watch's replay (x-oada-rev) runs before other requests get a turn.",
        ),
    ] = ServerConfig.model_fields["replay_slice"].default,
    ws_ping_interval: Annotated[
        float, typer.Option(min=0.01, help="Seconds between WebSocket keepalive pings.")
    ] = ServerConfig.model_fields["ws_ping_interval"].default,
    document_cache_size: Annotated[
        int,
        typer.Option(
            min=0,
            help="Documents kept in memory between requests, least recently used dropped "
            "first (reloaded from the database when used again).",
        ),
    ] = ServerConfig.model_fields["document_cache_size"].default,
    document_cache_bytes: Annotated[
        int,
        typer.Option(
            min=0,
            help="Bytes of documents kept in memory between requests (encoded size plus "
            "512 bytes each); large ones dropped first, then the least recently used.",
        ),
    ] = ServerConfig.model_fields["document_cache_bytes"].default,
    change_cache_bytes: Annotated[
        int,
        typer.Option(
            min=0,
            help="Bytes of change records kept in memory (the rest is read from the database).",
        ),
    ] = ServerConfig.model_fields["change_cache_bytes"].default,
    ws_send_buffer_bytes: Annotated[
        int,
        typer.Option(
            min=1,
            help="Bytes a WebSocket may have waiting to be sent before it is closed "
            "as too slow (code 1013).",
        ),
    ] = ServerConfig.model_fields["ws_send_buffer_bytes"].default,
    ws_send_buffer_total_bytes: Annotated[
        int,
        typer.Option(
            min=1,
            help="Bytes all WebSockets together may have waiting to be sent; past it the "
            "ones furthest behind are closed (code 1013).",
        ),
    ] = ServerConfig.model_fields["ws_send_buffer_total_bytes"].default,
    max_connections: Annotated[
        int,
        typer.Option(
            min=1,
            help="Connections served at once; more are answered 503.",
        ),
    ] = ServerConfig.model_fields["max_connections"].default,
    max_header_bytes: Annotated[
        int,
        typer.Option(min=1024, help="Bytes of an HTTP request's line and headers; more: 431."),
    ] = ServerConfig.model_fields["max_header_bytes"].default,
    request_read_timeout: Annotated[
        float,
        typer.Option(
            min=0.001,
            help="Seconds to receive an HTTP request whole (headers and body); then 408.",
        ),
    ] = ServerConfig.model_fields["request_read_timeout"].default,
    max_changes_listed: Annotated[
        int,
        typer.Option(min=1, help="Revs (the latest) a /_meta/_changes listing names."),
    ] = ServerConfig.model_fields["max_changes_listed"].default,
    max_watches_per_socket: Annotated[
        int,
        typer.Option(min=1, help="Watches one WebSocket may hold at once; more are refused (429)."),
    ] = ServerConfig.model_fields["max_watches_per_socket"].default,
    max_watches: Annotated[
        int,
        typer.Option(
            min=1, help="Watches all WebSockets may hold together; more are refused (503)."
        ),
    ] = ServerConfig.model_fields["max_watches"].default,
    log_level: Annotated[str, typer.Option(help="Python log level.")] = "warning",
) -> None:
    """Run the embedded OADA server (HTTP and WebSocket on one port).

    Example: oada-jobs serve --port 8080 --db oada.sqlite --token "$TOKEN"
    """
    require_extra("server", "serve")
    logging.basicConfig(level=log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    _return_large_buffers_to_the_os()
    if (tls_cert is None) != (tls_key is None):
        raise typer.BadParameter("--tls-cert and --tls-key go together", param_hint="--tls-key")
    if tls_self_signed and tls_cert is not None:
        raise typer.BadParameter(
            "choose either --tls-self-signed or --tls-cert/--tls-key", param_hint="--tls-cert"
        )
    plain = [t for t in token or [] if t.strip()]
    tokens = _tokens(plain) if plain or tokens_file is None else {}
    if tokens_file is not None:
        tokens.update(_tokens_file(tokens_file))
    config = ServerConfig(
        db=db,
        tokens=tokens,
        quirks=quirks.value,
        max_body_bytes=max_body_bytes,
        max_depth=max_depth,
        max_body_items=max_body_items,
        max_path_bytes=max_path_bytes,
        replay_slice=replay_slice,
        ws_ping_interval=ws_ping_interval,
        document_cache_size=document_cache_size,
        document_cache_bytes=document_cache_bytes,
        change_cache_bytes=change_cache_bytes,
        ws_send_buffer_bytes=ws_send_buffer_bytes,
        ws_send_buffer_total_bytes=ws_send_buffer_total_bytes,
        max_connections=max_connections,
        max_header_bytes=max_header_bytes,
        request_read_timeout=request_read_timeout,
        max_changes_listed=max_changes_listed,
        max_watches_per_socket=max_watches_per_socket,
        max_watches=max_watches,
    )
    ca_note = ""
    if tls_self_signed:
        from oada_jobs.server.tls import self_signed

        cert = self_signed(tls_dir)
        tls_cert, tls_key = cert.cert, cert.key
        ca_note = f"development CA certificate (trust it in clients): {cert.ca_cert}"

    async def run() -> None:
        from oada_jobs.server.runner import serve

        async with anyio.create_task_group() as tg:
            handle = await tg.start(
                partial(
                    serve,
                    config,
                    host=host,
                    port=port,
                    ssl_certfile=tls_cert,
                    ssl_keyfile=tls_key,
                    handle_signals=True,
                )
            )
            typer.echo(f"oada-jobs server listening on {handle.url}/ (WebSocket {handle.ws_url})")
            typer.echo(f"database: {db}; quirks: {quirks.value}")
            if ca_note:
                typer.echo(ca_note)
            # The token line ends the banner (scripts may wait for it).
            typer.echo(_token_hint(tokens))
            if host not in _LOOPBACK and "god" in tokens:
                typer.echo(
                    "warning: the public development token 'god' is accepted on a "
                    "non-loopback interface",
                    err=True,
                )

    try:
        run_process(run)
    except KeyboardInterrupt:
        # A second Ctrl-C during the graceful stop.
        pass
    except BaseException as error:
        # The port, the database or a TLS file: one line, not a traceback.
        leaf = first_leaf(error)
        if isinstance(leaf, OSError | DatabaseLocked):
            typer.echo(f"error: {leaf}", err=True)
            raise typer.Exit(1) from None
        raise
