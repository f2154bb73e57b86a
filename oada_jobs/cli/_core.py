"""What every ``oada-jobs`` command shares that needs no terminal UI: exit codes,
errors, settings, connecting. ``oada-jobs run`` works from this alone, so a
core install (no ``cli`` extra) can run a service; nothing here may import
typer or rich.

Exit codes (see docs/cli.md):

====  ===========================================================
0     done
1     the operation failed (no such job, job failed, server error)
2     bad usage: a missing or malformed option, setting or argument
3     the OADA server could not be reached
4     the OADA server refused the token (401) or the access (403)
====  ===========================================================
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from enum import IntEnum
from pathlib import Path
from typing import Any, NoReturn

import anyio
from pydantic import ValidationError

from .._loop import backend_options
from ..client import OADAClient
from ..exceptions import (
    Forbidden,
    InvalidKey,
    NotFound,
    OADAError,
    OADAStatusError,
    OADATransportError,
    Unauthorized,
    redact,
)
from ..settings import ENV_NAMES, Settings, describe_error, load_settings
from ..tree import resource_path

__all__ = [
    "CLIError",
    "ExitCode",
    "connect",
    "describe_oada_error",
    "describe_value",
    "fail",
    "first_leaf",
    "job_id_of",
    "read_json_argument",
    "resolve_service",
    "run_command",
    "settings_from",
]


class ExitCode(IntEnum):
    """The ``oada-jobs`` exit codes."""

    #: Done.
    OK = 0
    #: The operation failed.
    FAILED = 1
    #: Bad usage: missing or malformed options, settings or arguments.
    USAGE = 2
    #: The OADA server could not be reached.
    UNREACHABLE = 3
    #: The OADA server refused the token or the access.
    REFUSED = 4


class CLIError(Exception):
    """An error to show the user as one clear message, exiting with *code*."""

    def __init__(self, message: str, code: ExitCode = ExitCode.FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def settings_from(**overrides: Any) -> Settings:
    """Settings from the environment and ``.env``, with the given flags on top.

    *overrides* are flag values by settings field name (``None`` = not given).
    Bad values end the command with exit code 2 and a message naming the flag
    or variable (never its value).
    """
    try:
        return load_settings(**overrides)
    except ValidationError as error:
        message = describe_error(error)
        for name, value in overrides.items():
            if value is not None:
                env = ENV_NAMES[name]
                flag = "--" + name.replace("_", "-")
                message = message.replace(f"{env}:", f"{flag}:")
        raise CLIError(f"invalid setting: {message}", ExitCode.USAGE) from None


def resolve_service(settings: Settings, service: str | None) -> str:
    """The service name from ``--service`` or ``OADA_JOBS_SERVICE``."""
    from ..tree import validate_service_name

    name = service or settings.service
    if not name:
        raise CLIError(
            "no service given: pass --service NAME or set OADA_JOBS_SERVICE", ExitCode.USAGE
        )
    try:
        return validate_service_name(name)
    except ValueError as error:
        raise CLIError(f"bad --service: {error}", ExitCode.USAGE) from None


def _require_connection(settings: Settings) -> tuple[str, str]:
    if settings.domain is None:
        raise CLIError(
            "no OADA domain given: pass --domain https://your.oada.server or set OADA_DOMAIN",
            ExitCode.USAGE,
        )
    token = settings.token_value()
    if token is None:
        raise CLIError("no OADA token given: set OADA_TOKEN or pass --token", ExitCode.USAGE)
    return settings.domain, token


def describe_oada_error(error: OADAError, domain: str | None) -> CLIError:
    """Turn a client error into a message for people and the matching exit code."""
    where = f" at {domain}" if domain else ""
    if isinstance(error, OADATransportError):
        return CLIError(
            f"cannot reach the OADA server{where}: {error.message}. Is it running, and is "
            "the domain right?",
            ExitCode.UNREACHABLE,
        )
    if isinstance(error, Unauthorized):
        return CLIError(
            f"the OADA server{where} refused the token (401 Unauthorized). Check OADA_TOKEN "
            "or --token.",
            ExitCode.REFUSED,
        )
    if isinstance(error, Forbidden):
        return CLIError(
            f"the OADA server{where} refused access to {error.path or 'that path'} "
            f"(403 Forbidden): {error.message}",
            ExitCode.REFUSED,
        )
    if isinstance(error, NotFound):
        return CLIError(f"not found{where}: {error.path or error.message}", ExitCode.FAILED)
    if isinstance(error, OADAStatusError):
        return CLIError(f"the OADA server{where} answered: {error}", ExitCode.FAILED)
    return CLIError(f"OADA request failed{where}: {error}", ExitCode.FAILED)


@asynccontextmanager
async def connect(settings: Settings, *, check: bool = True) -> AsyncIterator[OADAClient]:
    """Open a client for the settings' domain and token.

    With *check*, ``HEAD /bookmarks`` first, so an unreachable server or a
    refused token ends the command at once with a clear message.
    """
    domain, token = _require_connection(settings)
    try:
        client = OADAClient(
            domain,
            token,
            connection="http",
            retries=1,
            max_backoff=0.5,
            timeout=15.0,
            connect_timeout=5.0,
            watch_deadline=15.0,
        )
    except ValueError as error:
        raise CLIError(f"cannot connect: {redact(str(error), token)}", ExitCode.USAGE) from None
    try:
        async with client:
            if check:
                await client.head("/bookmarks")
            yield client
    except OADAError as error:
        raise describe_oada_error(error, domain) from None


def run_command(main: Callable[[], Awaitable[None]]) -> None:
    """Run an async command body; client errors become a :class:`CLIError`."""
    try:
        anyio.run(main, backend_options=backend_options())
    except OADAError as error:
        raise describe_oada_error(error, None) from None


def first_leaf(error: BaseException) -> BaseException:
    """The first non-group exception inside (nested) exception groups."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return error


def fail(message: str, code: ExitCode = ExitCode.FAILED) -> NoReturn:
    """End the command with *message* on stderr and exit *code*."""
    raise CLIError(message, code)


def read_json_argument(text: str, what: str) -> Any:
    """Parse *text* as JSON; ``@path`` reads a file, ``-`` reads stdin."""
    source = "the command line"
    if text == "-":
        text, source = sys.stdin.read(), "stdin"
    elif text.startswith("@"):
        path = Path(text[1:])
        try:
            text, source = path.read_text(encoding="utf-8"), str(path)
        except OSError as error:
            message = f"cannot read {what} from {path}: {error.strerror}"
            raise CLIError(message, ExitCode.USAGE) from None
        except UnicodeDecodeError:
            raise CLIError(f"{what} from {path} is not UTF-8 text", ExitCode.USAGE) from None
    try:
        # Strict JSON: NaN, Infinity and numbers too large for a double are
        # what Python's parser lets through and no OADA request can carry.
        return json.loads(text, parse_constant=_not_json, parse_float=_finite)
    except json.JSONDecodeError as error:
        raise CLIError(
            f"{what} from {source} is not valid JSON: {error.msg} at line {error.lineno} "
            f"column {error.colno}",
            ExitCode.USAGE,
        ) from None
    except (ValueError, RecursionError) as error:
        reason = "it is nested too deeply" if isinstance(error, RecursionError) else str(error)
        raise CLIError(
            f"{what} from {source} is not valid JSON: {reason}", ExitCode.USAGE
        ) from None


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not a JSON value")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text} is out of range")
    return value


def job_id_of(text: str) -> str:
    """``resources/<key>`` from ``resources/<key>``, ``/resources/<key>`` or ``<key>``."""
    cleaned = text.strip().strip("/")
    if cleaned.startswith("resources/"):
        cleaned = cleaned.removeprefix("resources/")
    try:
        resource_path(f"resources/{cleaned}")
    except InvalidKey:
        raise CLIError(
            f"expected a job id like resources/2Jx... or its key, got {text!r}", ExitCode.USAGE
        ) from None
    return f"resources/{cleaned}"


def describe_value(value: object) -> str:
    """``an object``/``a list``/... for error messages."""
    if value is None:
        return "null"
    if isinstance(value, Mapping):
        return "an object"
    return f"a {type(value).__name__}"
