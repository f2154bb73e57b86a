"""The one retry-with-backoff helper, on tenacity, for the client, the server's
callers and the framework.

:func:`retry` runs a step, and while it fails with an error the caller
calls retryable, waits and runs it again. The first try goes straight to the
step (most succeed, and they then cost no retry machinery); later ones run
under :class:`tenacity.AsyncRetrying` with anyio's sleep (or the caller's, so
a retry loop can end early when its owner stops).

Owns only the retry loop and the backoff shapes. Imports nothing from the
package, so every layer (client, server, framework) may use it.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_never,
)

__all__ = ["Delay", "exponential", "retry"]

T = TypeVar("T")

#: Seconds to wait before the *n*-th retry (1 for the first), given the error.
Delay = Callable[[BaseException, int], float]


def exponential(first: float, most: float, *, jitter: bool = False) -> Delay:
    """*first* seconds before the first retry, doubling up to *most*; with
    *jitter* a random 50-100 % of that (so many retriers spread out)."""

    def delay(error: BaseException, retry: int) -> float:
        seconds = min(most, first * 2.0 ** (retry - 1))
        return seconds * (0.5 + random.random() / 2) if jitter else seconds

    return delay


async def retry(
    step: Callable[[], Awaitable[T]],
    *,
    retryable: Callable[[BaseException], bool],
    delay: Delay,
    retries: int | None = None,
    on_retry: Callable[[BaseException, float], None] = lambda error, seconds: None,
    sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
) -> T:
    """Run *step*; after an error *retryable* accepts, wait and run it again.

    :param delay: seconds before each retry (see :data:`Delay`).
    :param retries: retries at most (``None``: until the caller's cancel
        scope ends it); the last error is raised as it was.
    :param on_retry: told the error and the wait before each retry (to log it).
    :param sleep: how to wait (``anyio.sleep`` unless the caller can be
        stopped while waiting).
    """
    try:
        return await step()
    except Exception as error:
        if retries == 0 or not retryable(error):
            raise
        first = error
    seconds = delay(first, 1)
    on_retry(first, seconds)
    await sleep(seconds)

    def wait(state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        assert error is not None
        return delay(error, state.attempt_number + 1)

    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        assert error is not None
        assert state.next_action is not None
        on_retry(error, state.next_action.sleep)

    retrying = AsyncRetrying(
        stop=stop_never if retries is None else stop_after_attempt(retries),
        wait=wait,
        # tenacity hands every BaseException to the predicate; a cancellation
        # or an exit is never a failed try to run again.
        retry=retry_if_exception(lambda error: isinstance(error, Exception) and retryable(error)),
        before_sleep=before_sleep,
        sleep=sleep,
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            return await step()
    raise AssertionError("unreachable: tenacity re-raises the last error")
