"""``oada-jobs serve``: run the embedded OADA server.

Owns this command: its steps (check the options, build the server's config,
serve and print the banner). Its option declarations are in
:mod:`oada_jobs.cli._serve_options`. May use the server and ``cli/_common``;
nothing but the ``cli`` package may import it.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import platform
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import anyio
import typer
from pydantic import ValidationError

from oada_jobs._loop import run as run_process
from oada_jobs.exceptions import DatabaseLocked
from oada_jobs.server.config import DEFAULT_TOKENS, ServerConfig, TokenInfo

from ._app import app
from ._common import first_leaf, require_extra
from ._serve_options import (
    DEFAULT,
    TOKENS_ENV,
    ChangeCacheBytesOption,
    DbOption,
    DocumentCacheBytesOption,
    DocumentCacheSizeOption,
    HostOption,
    LogLevelOption,
    MaxBodyBytesOption,
    MaxBodyItemsOption,
    MaxChangesListedOption,
    MaxConnectionsOption,
    MaxDepthOption,
    MaxHeaderBytesOption,
    MaxPathBytesOption,
    MaxWatchesOption,
    MaxWatchesPerSocketOption,
    PortOption,
    Quirks,
    QuirksOption,
    ReplaySliceOption,
    RequestReadTimeoutOption,
    TlsCertOption,
    TlsDirOption,
    TlsKeyOption,
    TlsSelfSignedOption,
    TokensFileOption,
    TokensOption,
    WsBufferBytesOption,
    WsBufferTotalBytesOption,
    WsPingIntervalOption,
)

__all__ = ["serve_command"]

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


def _set_up_process(log_level: str) -> None:
    """What a long-running server needs first: its extra, logging, an allocator
    that gives memory back."""
    require_extra("server", "serve")
    logging.basicConfig(level=log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    _return_large_buffers_to_the_os()


def _check_tls_options(cert: Path | None, key: Path | None, self_signed: bool) -> None:
    if (cert is None) != (key is None):
        raise typer.BadParameter("--tls-cert and --tls-key go together", param_hint="--tls-key")
    if self_signed and cert is not None:
        raise typer.BadParameter(
            "choose either --tls-self-signed or --tls-cert/--tls-key", param_hint="--tls-cert"
        )


@dataclass(frozen=True, slots=True)
class _Tls:
    """The files the server's TLS uses, and what to say about them."""

    cert: Path | None = None
    key: Path | None = None
    ca_note: str = ""


def _tls_files(cert: Path | None, key: Path | None, self_signed: bool, where: Path | None) -> _Tls:
    """The certificate and key given, or with *self_signed* a development
    certificate generated in *where* (default: a temporary directory)."""
    if not self_signed:
        return _Tls(cert, key)
    from oada_jobs.server.tls import self_signed as generate

    made = generate(where)
    return _Tls(
        made.cert, made.key, f"development CA certificate (trust it in clients): {made.ca_cert}"
    )


def _accepted_tokens(token: list[str] | None, tokens_file: Path | None) -> dict[str, TokenInfo]:
    """The tokens of --token (the development ones when neither option is
    given), and those of --tokens-file."""
    plain = [t for t in token or [] if t.strip()]
    tokens = _tokens(plain) if plain or tokens_file is None else {}
    if tokens_file is not None:
        tokens.update(_tokens_file(tokens_file))
    return tokens


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


def _run_server(config: ServerConfig, host: str, port: int, tls: _Tls) -> None:
    """Serve until SIGTERM or SIGINT; a port, database or TLS file that cannot
    be used ends it with one line, not a traceback."""
    try:
        run_process(partial(_serve, config, host, port, tls))
    except KeyboardInterrupt:
        # A second Ctrl-C during the graceful stop.
        pass
    except BaseException as error:
        leaf = first_leaf(error)
        if isinstance(leaf, OSError | DatabaseLocked):
            typer.echo(f"error: {leaf}", err=True)
            raise typer.Exit(1) from None
        raise


async def _serve(config: ServerConfig, host: str, port: int, tls: _Tls) -> None:
    from oada_jobs.server.runner import serve

    async with anyio.create_task_group() as tg:
        handle = await tg.start(
            partial(
                serve,
                config,
                host=host,
                port=port,
                ssl_certfile=tls.cert,
                ssl_keyfile=tls.key,
                handle_signals=True,
            )
        )
        _print_banner(handle.url, handle.ws_url, config, host, tls)


def _print_banner(url: str, ws_url: str, config: ServerConfig, host: str, tls: _Tls) -> None:
    typer.echo(f"oada-jobs server listening on {url}/ (WebSocket {ws_url})")
    typer.echo(f"database: {config.db}; quirks: {config.quirks}")
    if tls.ca_note:
        typer.echo(tls.ca_note)
    # The token line ends the banner (scripts may wait for it).
    typer.echo(_token_hint(config.tokens))
    if host not in _LOOPBACK and "god" in config.tokens:
        typer.echo(
            "warning: the public development token 'god' is accepted on a non-loopback interface",
            err=True,
        )


@app.command("serve")
def serve_command(
    host: HostOption = "127.0.0.1",
    port: PortOption = 8080,
    db: DbOption = "oada.sqlite",
    token: TokensOption = None,
    tokens_file: TokensFileOption = None,
    quirks: QuirksOption = Quirks.none,
    tls_cert: TlsCertOption = None,
    tls_key: TlsKeyOption = None,
    tls_self_signed: TlsSelfSignedOption = False,
    tls_dir: TlsDirOption = None,
    max_body_bytes: MaxBodyBytesOption = DEFAULT["max_body_bytes"],
    max_depth: MaxDepthOption = DEFAULT["max_depth"],
    max_body_items: MaxBodyItemsOption = DEFAULT["max_body_items"],
    max_path_bytes: MaxPathBytesOption = DEFAULT["max_path_bytes"],
    replay_slice: ReplaySliceOption = DEFAULT["replay_slice"],
    ws_ping_interval: WsPingIntervalOption = DEFAULT["ws_ping_interval"],
    document_cache_size: DocumentCacheSizeOption = DEFAULT["document_cache_size"],
    document_cache_bytes: DocumentCacheBytesOption = DEFAULT["document_cache_bytes"],
    change_cache_bytes: ChangeCacheBytesOption = DEFAULT["change_cache_bytes"],
    ws_send_buffer_bytes: WsBufferBytesOption = DEFAULT["ws_send_buffer_bytes"],
    ws_send_buffer_total_bytes: WsBufferTotalBytesOption = DEFAULT["ws_send_buffer_total_bytes"],
    max_connections: MaxConnectionsOption = DEFAULT["max_connections"],
    max_header_bytes: MaxHeaderBytesOption = DEFAULT["max_header_bytes"],
    request_read_timeout: RequestReadTimeoutOption = DEFAULT["request_read_timeout"],
    max_changes_listed: MaxChangesListedOption = DEFAULT["max_changes_listed"],
    max_watches_per_socket: MaxWatchesPerSocketOption = DEFAULT["max_watches_per_socket"],
    max_watches: MaxWatchesOption = DEFAULT["max_watches"],
    log_level: LogLevelOption = "warning",
) -> None:
    """Run the embedded OADA server (HTTP and WebSocket on one port).

    Example: oada-jobs serve --port 8080 --db oada.sqlite --token "$TOKEN"
    """
    _set_up_process(log_level)
    _check_tls_options(tls_cert, tls_key, tls_self_signed)
    config = ServerConfig(
        db=db,
        tokens=_accepted_tokens(token, tokens_file),
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
    _run_server(config, host, port, _tls_files(tls_cert, tls_key, tls_self_signed, tls_dir))
