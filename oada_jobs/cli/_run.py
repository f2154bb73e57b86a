"""What ``oada-jobs run`` does, for both of its front ends.

:mod:`oada_jobs.cli.run` (typer, with the ``cli`` extra) and
:mod:`oada_jobs.cli._minimal` (argparse, in the core install) parse the
command line and call :func:`run_service`. Nothing here may import typer or
rich: a service in a container runs from the core install alone.
"""

from __future__ import annotations

import importlib
import logging
import sys
import traceback
from functools import partial
from pathlib import Path
from typing import Any

import anyio

from .._loop import run as run_process
from ..exceptions import ListenError, OADAError
from ..service import Service
from ..settings import Settings
from ._core import CLIError, ExitCode, connect, describe_oada_error, first_leaf, settings_from

__all__ = ["apply_settings", "import_service", "run_service"]

logger = logging.getLogger("oada_jobs")


def import_service(target: str, app_dir: Path | None = None) -> Service:
    """Import ``module[:attribute]`` (attribute defaults to ``service``) and return the Service.

    The attribute may also be a function without arguments that returns one.
    Errors are :class:`CLIError` with a message saying what was expected.
    """
    module_name, _, attribute = target.partition(":")
    attribute = attribute or "service"
    if not module_name or not all(part.isidentifier() for part in module_name.split(".")):
        raise CLIError(
            f"expected MODULE:SERVICE like examples.email_service:service, got {target!r}",
            ExitCode.USAGE,
        )
    # Like `python -m`, find modules in the working directory (or --app-dir).
    directory = str((app_dir or Path.cwd()).resolve())
    if directory not in sys.path:
        sys.path.insert(0, directory)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name is not None and module_name.startswith(error.name):
            raise CLIError(
                f"cannot import {module_name!r}: no module named {error.name!r} "
                f"(looked in {directory} and the installed packages)",
                ExitCode.USAGE,
            ) from None
        raise CLIError(_import_failure(module_name, error)) from None
    except Exception as error:
        raise CLIError(_import_failure(module_name, error)) from None
    try:
        found: Any = module
        for part in attribute.split("."):
            found = getattr(found, part)
    except AttributeError:
        raise CLIError(
            f"module {module_name!r} has no attribute {attribute!r}; expected "
            f"{module_name}:<name of your Service object>",
            ExitCode.USAGE,
        ) from None
    if not isinstance(found, Service) and callable(found):
        found = found()
    if not isinstance(found, Service):
        raise CLIError(
            f"{target} is not a Service: expected oada_jobs.Service(...) (or a function "
            f"returning one), got {type(found).__name__}",
            ExitCode.USAGE,
        )
    # A Service runs once; a fresh copy keeps the imported object untouched
    # (so importing twice in one process, as tests do, works).
    return found.copy()


def _import_failure(module_name: str, error: BaseException) -> str:
    text = "".join(traceback.format_exception(error)).rstrip()
    return f"importing {module_name!r} failed:\n{text}"


def apply_settings(service: Service, settings: Settings) -> None:
    """Give *service* every option set by a flag, the environment or ``.env``.

    Options not set anywhere keep what the service's code chose; the same
    rules as :meth:`Service.from_env`.
    """
    try:
        service.configure_from_env(settings)
    except (ValueError, RuntimeError) as error:
        raise CLIError(f"cannot configure {service.name}: {error}", ExitCode.USAGE) from None


def run_service(
    target: str,
    *,
    concurrency: int | None = None,
    layout: str | None = None,
    metrics_port: int | None = None,
    grace_period: float | None = None,
    log_level: str | None = None,
    log_format: str | None = None,
    app_dir: Path | None = None,
    check: bool = False,
    domain: str | None = None,
    token: str | None = None,
) -> None:
    """Import the service at *target*, configure it and run it until SIGTERM or SIGINT.

    ``None`` means "not given on the command line". Errors are
    :class:`~oada_jobs.cli._core.CLIError` with their exit code.
    """
    settings = settings_from(
        log_level=log_level,
        log_format=log_format,
        domain=domain,
        token=token,
        concurrency=concurrency,
        layout=layout,
        metrics_port=metrics_port,
        grace_period=grace_period,
    )
    service = import_service(target, app_dir)
    apply_settings(service, settings)
    service_domain = _domain_of(service)
    settings.configure_logging()
    try:
        run_process(partial(_run, service, settings, service_domain, check=check))
    except BaseException as error:
        _explain_failure(error, service.name, service_domain)
        raise


def _domain_of(service: Service) -> str:
    try:
        return service.domain
    except RuntimeError:
        raise CLIError(
            f"no OADA domain for {service.name}: pass --domain https://your.oada.server or "
            "set OADA_DOMAIN",
            ExitCode.USAGE,
        ) from None


async def _run(service: Service, settings: Settings, domain: str, *, check: bool) -> None:
    """Check the server and the token, then (unless only checking) run *service*."""
    if settings.token is not None:
        # Fail in a second, not after the client's retries, when the
        # server is down or refuses the token.
        async with connect(settings.model_copy(update={"domain": domain})):
            pass
    if check:
        print(f"{service.name}: settings and server OK ({domain})", file=sys.stderr, flush=True)
        return
    async with anyio.create_task_group() as group:
        await group.start(service.run)
        logger.info("%s is running on %s; stop it with SIGTERM or Ctrl-C", service.name, domain)


def _explain_failure(error: BaseException, name: str, domain: str) -> None:
    """Raise the one-line :class:`CLIError` for a service that could not run,
    when *error* is one the user can act on; otherwise return."""
    leaf = first_leaf(error)
    if isinstance(leaf, CLIError):
        raise leaf from None
    if isinstance(leaf, ListenError):
        # --metrics-port taken: say so in one line.
        raise CLIError(f"{name} cannot start: {leaf}", ExitCode.FAILED) from None
    if isinstance(leaf, OADAError):
        raise describe_oada_error(leaf, domain) from None
    if isinstance(leaf, ValueError):
        raise CLIError(f"{name} cannot start: {leaf}", ExitCode.USAGE) from None
