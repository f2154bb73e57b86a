"""Headless Chromium for the dashboard's browser tests (Debian's package, through Playwright).

Never ``playwright install``: the browser is the system's ``chromium``
(``make browser`` installs it as root with apt).
"""

from __future__ import annotations

import os
import shutil

import pytest

#: Debian's Chromium.
CHROMIUM = os.environ.get("OADA_JOBS_CHROMIUM", "/usr/bin/chromium")
#: Flags for a quiet, sandbox-free headless run in a container.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def require_chromium() -> None:
    """Skip the calling test module, saying why, when no Chromium or Playwright is there."""
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)) and not shutil.which(
        CHROMIUM
    ):
        pytest.skip(
            f"no Chromium at {CHROMIUM}: run `make browser` as root (apt-get install chromium)",
            allow_module_level=True,
        )
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        pytest.skip(
            "Playwright for Python is not installed (pip install playwright)",
            allow_module_level=True,
        )
