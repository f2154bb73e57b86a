"""Stop requests from the operating system: SIGTERM and SIGINT, on every platform.

Owns how a running service learns that it should stop; it knows nothing of
the service beyond the callback it is given.

On POSIX, anyio's signal receiver is used. Where an event loop cannot install
signal handlers (asyncio on Windows raises :class:`NotImplementedError`), the
Python-level handlers of :func:`signal.signal` take over: from the main
thread they hand the stop request to the event loop, so Ctrl-C (or a
``CTRL_BREAK_EVENT``) still stops the service gracefully. The first signal
restores the previous handlers, so a second Ctrl-C interrupts at once. In a
thread other than the main one no handler can be installed at all; the
service then runs until it is stopped by its :meth:`stop` method.

Owns turning stop signals into a callback; imports nothing from the package
and must not touch the service (it is given what to call).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from types import FrameType
from typing import Any

import anyio
from anyio.abc import TaskStatus

__all__ = ["STOP_SIGNALS", "stop_on_signals"]

logger = logging.getLogger("oada_jobs")

#: The signals that ask a service to stop (SIGBREAK too where it exists: Windows).
STOP_SIGNALS: tuple[signal.Signals, ...] = (
    signal.SIGTERM,
    signal.SIGINT,
    *((signal.Signals(signal.SIGBREAK),) if hasattr(signal, "SIGBREAK") else ()),
)


async def stop_on_signals(
    on_signal: Callable[[str], None], *, task_status: TaskStatus[None]
) -> None:
    """Call *on_signal* with the signal's name when a stop signal arrives, then return.

    Started with ``task_group.start()``: it reports started once the
    handlers are in place (or known to be unavailable).
    """
    with ExitStack() as stack:
        try:
            signals = stack.enter_context(anyio.open_signal_receiver(*STOP_SIGNALS))
        except NotImplementedError:
            pass  # the event loop cannot handle signals (Windows): see below
        else:
            task_status.started()
            async for signum in signals:
                on_signal(signal.Signals(signum).name)
                return
            return
    received = anyio.Event()
    names: list[str] = []
    with _python_handlers(received, names) as installed:
        if not installed:
            logger.warning(
                "signal handlers cannot be installed outside the main thread; "
                "stop the service with service.stop()"
            )
        task_status.started()
        await received.wait()
    on_signal(names[0])


@contextmanager
def _python_handlers(received: anyio.Event, names: list[str]) -> Iterator[bool]:
    """Install ``signal.signal`` handlers setting *received*; yield whether they are in."""
    if threading.current_thread() is not threading.main_thread():
        yield False
        return
    loop = asyncio.get_running_loop()
    previous: dict[signal.Signals, Any] = {}

    def restore() -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        previous.clear()

    def handle(signum: int, frame: FrameType | None) -> None:
        # Runs in the main thread between bytecodes: only hand over.
        names.append(signal.Signals(signum).name)
        restore()
        loop.call_soon_threadsafe(received.set)

    try:
        for signum in STOP_SIGNALS:
            try:
                previous[signum] = signal.signal(signum, handle)
            except (OSError, ValueError):
                continue  # a signal this platform does not deliver
        yield True
    finally:
        restore()
