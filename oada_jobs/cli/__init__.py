"""The ``oada-jobs`` command line.

Two front ends, one per install:

- with the ``cli`` extra (typer, rich), every command:
  :mod:`oada_jobs.cli.commands` and its typer :data:`app`;
- without it, :mod:`oada_jobs.cli._minimal` (argparse): ``run`` alone, so a
  service in a container needs nothing but the core install, and a clear
  message naming the extra for every other command.

Both call the same command bodies. :func:`main` picks the front end.
"""

from __future__ import annotations

import importlib
from typing import Any

from .._extras import missing
from . import _minimal

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point."""
    if missing("cli"):
        _minimal.main()
    else:
        importlib.import_module(".commands", __name__).app()


def __getattr__(name: str) -> Any:
    # `app` imports typer, which a core install lacks: import it when asked for.
    if name == "app":
        return importlib.import_module(".commands", __name__).app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
