"""Fixtures for the conformance tests.

Each test module runs the Node scripts once in module-scoped async fixtures,
so the event loop (``anyio_backend``) must live as long as the module.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"
