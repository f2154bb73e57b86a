"""Which optional parts of oada-jobs are installed: the extras of its distribution.

The core install (the framework, the OADA client and ``oada-jobs run``) needs
no extra. ``server`` installs the embedded OADA server, ``cli`` every other
command and the terminal UI, ``dashboard`` the web dashboard. This module only looks for the extras' packages;
it must never import them.
"""

from __future__ import annotations

from importlib.util import find_spec
from typing import Literal

from .exceptions import MissingExtra

__all__ = ["EXTRAS", "Extra", "missing", "require"]

Extra = Literal["server", "cli", "dashboard"]

#: The importable packages each extra brings, as pyproject.toml lists them
#: (the server and dashboard extras include the cli one: they are started by
#: `oada-jobs serve` and `oada-jobs dashboard`).
EXTRAS: dict[Extra, tuple[str, ...]] = {
    "server": ("starlette", "uvicorn", "httptools", "cryptography", "typer", "rich"),
    "cli": ("typer", "rich"),
    "dashboard": ("jinja2", "itsdangerous", "starlette", "uvicorn", "typer", "rich"),
}


def missing(extra: Extra) -> list[str]:
    """The packages of *extra* that cannot be imported."""
    return [name for name in EXTRAS[extra] if find_spec(name) is None]


def require(extra: Extra, what: str) -> None:
    """Raise :class:`~oada_jobs.exceptions.MissingExtra` unless *extra* is installed.

    *what* names what needs it, e.g. ``"oada-jobs serve"``.
    """
    if missing(extra):
        raise MissingExtra(what, extra)
