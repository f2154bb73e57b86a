"""Live control of a service from OADA: paused job types and per-type settings.

A service follows one resource, ``/bookmarks/services/<name>/control``,
written by people and tools (``oada-jobs jobs pause``), and read by every
replica of the service::

    {
      "paused": {"all": false, "types": {"email": true}},
      "types": {
        "email": {"timeout": 30, "tries": 5, "retryDelay": 2, "priority": 1,
                  "concurrency": 2, "rateLimit": {"limit": 10, "period": 60}}
      },
      "status": {"ok": true, "errors": {}, "time": "..."}     (written by the service)
    }

``paused`` uses an object of type -> boolean rather than a list so that
pausing one type and resuming another are single merge ``PUT``\\ s, which
never overwrite each other. ``types`` overrides, per job type, the values
given in code to ``service.on`` (which stay the defaults). A part that does
not validate is refused as a whole: the values in force before it stay,
and ``status.errors`` says why (keyed ``paused`` or ``types/<type>``), as
does the log.

Owns :class:`Control` (the parsed resource), :class:`TypeSettings`,
:class:`RateLimit`, :func:`parse_control` and :class:`ControlFollower`
(ensure, read, watch, report status). May use the client, the tree and the
job model's clock; must not touch the queue, the runner, the dispatcher or
the service: what a change means is given to it as a callable.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

import anyio
from anyio.abc import TaskStatus
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from ._retry import Delay, retry
from .client import OADAClient
from .config import CONTROL_MAX_TYPES, CONTROL_TYPE_BYTES, RATE_LIMIT_MAX
from .exceptions import OADAError
from .job import iso, utc_now
from .tree import BOOKMARKS_TYPE, SERVICE_TYPE, SERVICES_TYPE, service_root
from .types import JsonObject, Tree

__all__ = [
    "CONTROL_CONTENT_TYPE",
    "Control",
    "ControlFollower",
    "RateLimit",
    "TypeSettings",
    "control_path",
    "control_tree",
    "parse_control",
    "set_paused",
]

logger = logging.getLogger("oada_jobs")

#: Content type of the control and limits resources.
CONTROL_CONTENT_TYPE = "application/vnd.oada.service.control.1+json"

Seconds = Annotated[float, Field(gt=0, le=366 * 86400, allow_inf_nan=False)]
Delay0 = Annotated[float, Field(ge=0, le=366 * 86400, allow_inf_nan=False)]


class _Strict(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, strict=True, alias_generator=to_camel, populate_by_name=True
    )


class RateLimit(_Strict):
    """At most :attr:`limit` starts of a type in any :attr:`period` seconds, over replicas."""

    limit: Annotated[int, Field(ge=1, le=RATE_LIMIT_MAX)]
    period: Seconds


class TypeSettings(_Strict):
    """Per-type settings from the control resource; ``None`` keeps the code's value."""

    #: Seconds a work function may run.
    timeout: Seconds | None = None
    #: Times a job may be started in all.
    tries: Annotated[int, Field(ge=1, le=1000)] | None = None
    #: Seconds before the second try (then times ``backoff``).
    retry_delay: Delay0 | None = None
    #: Priority of jobs that set none.
    priority: Annotated[int, Field(ge=-(10**9), le=10**9)] | None = None
    #: Jobs of the type running at once, over all replicas.
    concurrency: Annotated[int, Field(ge=1, le=10_000)] | None = None
    #: Starts of the type per period, over all replicas.
    rate_limit: RateLimit | None = None


@dataclass(frozen=True, slots=True)
class Control:
    """What the control resource says, as far as it validated."""

    #: Every type is paused.
    paused_all: bool = False
    #: These types are paused.
    paused_types: frozenset[str] = frozenset()
    #: Settings by job type.
    types: Mapping[str, TypeSettings] = field(default_factory=dict)

    def paused(self, job_type: str) -> bool:
        """Whether jobs of *job_type* may not start now."""
        return self.paused_all or job_type in self.paused_types

    def settings(self, job_type: str) -> TypeSettings | None:
        return self.types.get(job_type)


def _describe(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _type_key_problem(key: str) -> str | None:
    if not key or len(key.encode("utf-8", "surrogatepass")) > CONTROL_TYPE_BYTES:
        return f"expected a job type of 1 to {CONTROL_TYPE_BYTES} bytes, got {len(key)} characters"
    return None


def _parse_paused(value: object, previous: Control) -> tuple[bool, frozenset[str], str | None]:
    if value is None:
        return False, frozenset(), None
    if not isinstance(value, Mapping):
        return (
            previous.paused_all,
            previous.paused_types,
            f"expected an object {{'all': bool, 'types': {{type: bool}}}}, got {_describe(value)}",
        )
    unknown = sorted(set(value) - {"all", "types"})
    all_value = value.get("all", False)
    types = value.get("types") or {}
    problem = None
    if unknown:
        problem = f"unknown keys {unknown}; expected 'all' and 'types'"
    elif not isinstance(all_value, bool):
        problem = f"expected 'all' to be a boolean, got {_describe(all_value)}"
    elif not isinstance(types, Mapping):
        problem = f"expected 'types' to be an object of type -> boolean, got {_describe(types)}"
    elif len(types) > CONTROL_MAX_TYPES:
        problem = f"expected at most {CONTROL_MAX_TYPES} types, got {len(types)}"
    else:
        for key, flag in types.items():
            problem = _type_key_problem(key)
            if problem is None and not isinstance(flag, bool):
                problem = f"expected types/{key} to be a boolean, got {_describe(flag)}"
            if problem is not None:
                break
    if problem is not None:
        return previous.paused_all, previous.paused_types, problem
    assert isinstance(types, Mapping)
    return all_value, frozenset(key for key, flag in types.items() if flag), None


def _validation_text(error: ValidationError) -> str:
    parts = []
    for item in error.errors(include_url=False):
        where = "/".join(str(part) for part in item["loc"]) or "(the object)"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


def parse_control(data: object, previous: Control) -> tuple[Control, dict[str, str]]:
    """The control in force after *data* is read, and the errors found.

    A part that does not validate (``paused``, or one type's settings) keeps
    its value from *previous*; its error is keyed ``paused`` or
    ``types/<type>``.
    """
    errors: dict[str, str] = {}
    if not isinstance(data, Mapping):
        if data is not None:
            errors["control"] = f"expected an object, got {_describe(data)}"
        return previous, errors
    paused_all, paused_types, problem = _parse_paused(data.get("paused"), previous)
    if problem is not None:
        errors["paused"] = problem
    types: dict[str, TypeSettings] = {}
    raw_types = data.get("types")
    if raw_types is None:
        raw_types = {}
    if not isinstance(raw_types, Mapping):
        errors["types"] = f"expected an object of type -> settings, got {_describe(raw_types)}"
        types = dict(previous.types)
    elif len(raw_types) > CONTROL_MAX_TYPES:
        errors["types"] = f"expected at most {CONTROL_MAX_TYPES} types, got {len(raw_types)}"
        types = dict(previous.types)
    else:
        for key, value in raw_types.items():
            if key.startswith("_"):
                continue  # OADA's own keys (_id, _rev, _meta, _type)
            problem = _type_key_problem(key)
            if problem is not None:
                errors[f"types/{key[:64]}"] = problem
                continue
            if value is None:
                continue
            try:
                types[key] = TypeSettings.model_validate(value)
            except ValidationError as error:
                errors[f"types/{key}"] = _validation_text(error)
                kept = previous.types.get(key)
                if kept is not None:
                    types[key] = kept
    return Control(paused_all, paused_types, types), errors


def control_path(service: str) -> str:
    """``/bookmarks/services/<service>/control``."""
    return f"{service_root(service)}/control"


def control_tree() -> Tree:
    """The tree creating the control and limits resources of any service."""
    node = {"_type": CONTROL_CONTENT_TYPE}
    return {
        "bookmarks": {
            "_type": BOOKMARKS_TYPE,
            "services": {
                "_type": SERVICES_TYPE,
                "_rev": 0,
                "*": {"_type": SERVICE_TYPE, "_rev": 0, "control": node, "limits": node},
            },
        }
    }


#: Keys of a change to the control resource that need no new read.
_OWN_KEYS = frozenset({"status", "_rev", "_meta", "_id", "_type"})


async def set_paused(
    oada: OADAClient, service: str, paused: bool, types: Iterable[str] = ()
) -> JsonObject:
    """Pause (or resume) *types* of *service*, or the whole queue when none are named.

    One merge ``PUT`` on the control resource; every replica follows it.
    Returns the body written. Resuming the whole queue also resumes every
    type paused by name. Raises :class:`ValueError` for a type the control
    would refuse.
    """
    names = list(types)
    for name in names:
        problem = _type_key_problem(name) if isinstance(name, str) else "expected a string"
        if problem is not None:
            raise ValueError(f"job type {name!r}: {problem}")
    path = control_path(service)
    await oada.ensure(path, {}, tree=control_tree())
    body: JsonObject
    if names:
        body = {"paused": {"types": dict.fromkeys(names, paused)}}
    elif paused:
        body = {"paused": {"all": True}}
    else:
        current = (await oada.get(path)).data
        paused_now = current.get("paused") if isinstance(current, Mapping) else None
        named = paused_now.get("types") if isinstance(paused_now, Mapping) else None
        names = [key for key in named if isinstance(key, str)] if isinstance(named, Mapping) else []
        body = {"paused": {"all": False, "types": dict.fromkeys(names, False)}}
    await oada.put(path, body, content_type=CONTROL_CONTENT_TYPE)
    return body


class ControlFollower:
    """Follows a service's control resource and tells *apply* what it says.

    *apply* is called with the :class:`Control` in force and the errors
    found after every read (also the first one, before ``task_status.started()``). Errors are logged once per change
    and written to ``status`` in the resource when they differ from what
    is there.
    """

    def __init__(
        self,
        service: str,
        *,
        apply: Callable[[Control, Mapping[str, str]], Awaitable[None] | None],
        backoff: Delay,
    ) -> None:
        self.service = service
        self.path = control_path(service)
        self.apply = apply
        self.backoff = backoff
        #: The control in force.
        self.control = Control()
        #: Errors of the last read.
        self.errors: dict[str, str] = {}

    async def follow(
        self, oada: OADAClient, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Ensure, read and watch the resource until cancelled; retries on errors."""
        started = False

        async def once() -> None:
            nonlocal started
            await oada.ensure(self.path, {}, tree=control_tree())
            response = await oada.get(self.path)
            await self._take(oada, response.data)
            if not started:
                started = True
                task_status.started()
            async with oada.watch(self.path, rev=response.rev) as changes:
                async for change in changes:
                    body = change.body if isinstance(change.body, Mapping) else {}
                    if change.path in ("", "/") and not set(body) - _OWN_KEYS:
                        continue  # our own status report, or OADA's bookkeeping
                    await self._take(oada, (await oada.get(self.path)).data)

        def failed(error: BaseException, delay: float) -> None:
            logger.warning(
                "service %s: following %s failed: %s; retrying in %.1f s",
                self.service,
                self.path,
                error,
                delay,
            )
            nonlocal started
            if not started:
                started = True
                task_status.started()

        while True:
            await retry(
                once,
                retryable=lambda error: isinstance(error, OADAError),
                delay=self.backoff,
                on_retry=failed,
            )

    async def _take(self, oada: OADAClient, data: Any) -> None:
        control, errors = parse_control(data, self.control)
        if errors != self.errors:
            for where, message in errors.items():
                logger.error(
                    "service %s: control %s refused (the values before it stay): %s",
                    self.service,
                    where,
                    message,
                )
        if control != self.control or errors != self.errors:
            self.control = control
            self.errors = errors
            result = self.apply(control, dict(errors))
            if result is not None:
                await result
        status = data.get("status") if isinstance(data, Mapping) else None
        written = status.get("errors") if isinstance(status, Mapping) else None
        if written != errors and not (written is None and not errors):
            body: JsonObject = {
                "status": {"ok": not errors, "errors": None, "time": iso(utc_now())}
            }
            try:
                # Cleared first: a merge would keep errors that are gone.
                await oada.put(self.path, body, content_type=CONTROL_CONTENT_TYPE)
                body["status"]["errors"] = errors
                await oada.put(self.path, body, content_type=CONTROL_CONTENT_TYPE)
            except OADAError as error:
                logger.warning(
                    "service %s: could not write the control status: %s", self.service, error
                )
