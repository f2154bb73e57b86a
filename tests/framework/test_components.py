"""Components: parts of a service above it (periodic jobs, reports) that run beside its queues."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import pytest
from anyio.abc import TaskStatus

from oada_jobs import Service
from oada_jobs.service import Component


class Recorder:
    """A component that records what the service did with it."""

    def __init__(self, events: list[str]) -> None:
        self.events = events

    def copy(self) -> Component:
        self.events.append("copied")
        return Recorder(self.events)

    async def run(self, service: Service, *, task_status: TaskStatus[anyio.CancelScope]) -> None:
        with anyio.CancelScope() as scope:
            self.events.append(f"started:{service.state.value}")
            task_status.started(scope)
            try:
                await anyio.sleep_forever()
            finally:
                self.events.append(f"cancelled:{service.state.value}")


async def test_a_component_runs_while_its_service_runs(
    make_service: Callable[..., Service],
) -> None:
    events: list[str] = []
    service = make_service()
    service.add_component("recorder", Recorder(events))
    assert service.component("recorder") is not None
    with anyio.fail_after(20):
        async with service:
            # Started before the service counts as running; cancelled first
            # thing when it stops.
            assert events == ["started:starting"]
    assert events == ["started:starting", "cancelled:stopping"]


def test_components_are_added_once_and_before_start_and_copied_with_the_service() -> None:
    events: list[str] = []
    service = Service("components", domain="localhost:1", token="t")
    service.add_component("recorder", Recorder(events))
    with pytest.raises(ValueError, match="already"):
        service.add_component("recorder", Recorder(events))
    twin = service.copy()
    assert events == ["copied"]
    assert isinstance(twin.component("recorder"), Recorder)
    assert twin.component("recorder") is not service.component("recorder")
    assert service.component("other") is None


async def test_no_component_is_added_to_a_running_service(
    make_service: Callable[..., Service],
) -> None:
    service = make_service()
    with anyio.fail_after(20):
        async with service:
            with pytest.raises(RuntimeError, match="before the service starts"):
                service.add_component("late", Recorder([]))
            with pytest.raises(RuntimeError, match="before the service starts"):
                service.cron("late", "* * * * *")
