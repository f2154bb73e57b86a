"""The one retry helper: what it retries, how long it waits, when it gives up."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from oada_jobs._retry import exponential, retry


class Flaky:
    """Fails with *errors* in turn, then answers ``"ok"``."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def recorder() -> tuple[list[float], Callable[[float], Awaitable[None]]]:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    return slept, sleep


async def test_a_step_that_succeeds_runs_once_and_never_sleeps() -> None:
    slept, sleep = recorder()
    step = Flaky()
    assert await retry(step, retryable=lambda e: True, delay=exponential(1, 8), sleep=sleep) == "ok"
    assert (step.calls, slept) == (1, [])


async def test_retryable_errors_are_retried_with_growing_waits() -> None:
    slept, sleep = recorder()
    told: list[tuple[str, float]] = []
    step = Flaky(*(OSError(str(n)) for n in range(5)))
    result = await retry(
        step,
        retryable=lambda e: isinstance(e, OSError),
        delay=exponential(0.5, 4.0),
        on_retry=lambda error, seconds: told.append((str(error), seconds)),
        sleep=sleep,
    )
    assert result == "ok"
    assert step.calls == 6
    assert slept == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert told == [("0", 0.5), ("1", 1.0), ("2", 2.0), ("3", 4.0), ("4", 4.0)]


async def test_other_errors_are_raised_at_once() -> None:
    slept, sleep = recorder()
    step = Flaky(OSError("net"), KeyError("bug"))
    with pytest.raises(KeyError, match="bug"):
        await retry(
            step, retryable=lambda e: isinstance(e, OSError), delay=exponential(1, 1), sleep=sleep
        )
    assert (step.calls, slept) == (2, [1])


@pytest.mark.parametrize("retries", [0, 1, 3])
async def test_the_last_error_is_raised_after_the_retries_allowed(retries: int) -> None:
    slept, sleep = recorder()
    step = Flaky(*(OSError(str(n)) for n in range(10)))
    with pytest.raises(OSError, match=str(retries)):
        await retry(
            step,
            retryable=lambda e: True,
            delay=exponential(1, 1),
            retries=retries,
            sleep=sleep,
        )
    assert step.calls == retries + 1
    assert len(slept) == retries


class Stop(BaseException):
    """Stands for a cancellation: not an Exception."""


async def test_a_cancellation_is_never_retried_even_when_everything_else_is() -> None:
    slept, sleep = recorder()
    told: list[str] = []
    step = Flaky(OSError("net"), OSError("net"))
    step.errors.insert(1, Stop())
    with pytest.raises(Stop):
        await retry(
            step,
            retryable=lambda e: True,
            delay=exponential(1, 1),
            on_retry=lambda error, seconds: told.append(type(error).__name__),
            sleep=sleep,
        )
    assert (step.calls, slept, told) == (2, [1], ["OSError"])


def test_jitter_waits_half_to_all_of_the_delay() -> None:
    delay = exponential(1.0, 10.0, jitter=True)
    waits = [delay(OSError(), 3) for _ in range(200)]
    assert all(2.0 <= wait <= 4.0 for wait in waits)
    assert len(set(waits)) > 1
