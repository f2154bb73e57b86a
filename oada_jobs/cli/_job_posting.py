"""Posting a job from the command line and reporting what became of it:
``jobs post``, ``jobs retry`` and ``cron run`` share it.

Owns the messages around a posted job (announced at once, its status and
progress while waited for, its outcome) and the exit code a failed or
unfinished job gives. Must not parse options: the commands do.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import anyio

from ..client import OADAClient
from ..job import FINISHED, Job, JobOptions
from ..requester import latest_progress, wait_for_outcome
from ..testing import post_job, wait_until_filed
from ..tree import LayoutName, resource_path
from ._common import (
    CLIError,
    ExitCode,
    connect,
    err_console,
    out_console,
    print_json,
    resolve_layout,
)
from ._job_lists import status_text

__all__ = [
    "announce_posted",
    "filed_or_as_is",
    "post_and_report",
    "print_next_steps",
    "public_fields",
    "report_posted",
    "wait_if_asked",
]


def public_fields(data: Any) -> Any:
    """The job as stored, without the server's bookkeeping keys."""
    if isinstance(data, Mapping):
        return {key: value for key, value in data.items() if key not in ("_meta", "_rev")}
    return data


def print_next_steps(job_id: str) -> None:
    """Say how to look at the job *job_id*."""
    out_console.print(f"  look at it:  oada-jobs jobs show {job_id}")


async def post_and_report(
    settings: Any,
    name: str,
    job_type: str,
    config: dict[str, Any],
    wait: bool,
    wait_seconds: float,
    plain: bool,
    retry_of: str | None = None,
    *,
    options: JobOptions | None = None,
) -> None:
    """Post a job of *job_type* (a retry of *retry_of*, when given) to the
    service *name*, say so, wait for it if asked and report how it ended."""
    what = f"retry of {retry_of}" if retry_of else f"{job_type!r} job"
    async with connect(settings) as oada:
        chosen = await resolve_layout(oada, settings, name, posting=True)
        job_id = await post_job(oada, name, job_type, config, layout=chosen.name, options=options)
        announce_posted(job_id, name, what, wait=wait, wait_seconds=wait_seconds, plain=plain)
        finished = await wait_if_asked(oada, job_id, wait, wait_seconds, layout=chosen.name)
    report_posted(
        job_id,
        name,
        what,
        finished,
        wait=wait,
        wait_seconds=wait_seconds,
        plain=plain,
        summary={"retryOf": retry_of} if retry_of is not None else None,
        announced=True,
    )


def announce_posted(
    job_id: str, service: str, what: str, *, wait: bool, wait_seconds: float, plain: bool
) -> None:
    """Say a job was posted at once, before any wait (its id is what one needs
    to look at it, or cancel it, while it runs)."""
    key = job_id.removeprefix("resources/")
    if plain:
        # stdout carries one JSON document at the end; people watch stderr.
        if wait:
            err_console.print(f"posted {job_id}; waiting up to {wait_seconds:g} s")
        return
    out_console.print(f"posted {what} as [bold]{job_id}[/] (key {key}) for {service}")
    if wait:
        out_console.print(f"waiting up to {wait_seconds:g} s for it to finish")


async def wait_if_asked(
    oada: OADAClient, job_id: str, wait: bool, wait_seconds: float, *, layout: LayoutName
) -> Job[Any] | None:
    """With *wait*, the job once finished and filed (off the pending list of
    *layout*, so any list shows it), or ``None`` if that did not happen in
    time; its status changes and progress are shown on stderr meanwhile."""
    if not wait:
        return None
    path = resource_path(job_id)
    shown: list[object] = [None, None]

    def show(body: Mapping[str, Any]) -> None:
        status = body.get("status")
        if isinstance(status, str) and status != shown[0]:
            shown[0] = status
            err_console.print(f"  status: {status_text(status)}")
        progress = latest_progress(body)
        if progress is not None and progress != shown[1]:
            shown[1] = progress
            text = f"  progress: {progress.fraction:.0%}"
            err_console.print(text + (f" - {progress.message}" if progress.message else ""))

    deadline = anyio.current_time() + wait_seconds
    try:
        with anyio.fail_after(wait_seconds):
            response = await oada.get(path)
            if isinstance(response.data, Mapping):
                show(response.data)
            if not (isinstance(response.data, Mapping) and response.data.get("status") in FINISHED):
                async with oada.watch(path, rev=response.rev) as changes:
                    async for change in changes:
                        if change.path not in ("", "/") or not isinstance(change.body, Mapping):
                            continue
                        show(change.body)
                        if change.body.get("status") in FINISHED:
                            break
            finished = await wait_for_outcome(oada, job_id)
    except TimeoutError:
        return None
    return await filed_or_as_is(oada, finished, layout, deadline)


async def filed_or_as_is(
    oada: OADAClient, finished: Job[Any], layout: LayoutName, deadline: float
) -> Job[Any]:
    """*finished* once filed (so a list read next shows it), or as it is if it
    is still on its pending list at *deadline* (its service stopped between
    writing the outcome and filing it): the outcome is what was waited for."""
    with anyio.move_on_after(max(0.0, deadline - anyio.current_time())):
        return await wait_until_filed(oada, finished, layout)
    return finished


def report_posted(
    job_id: str,
    service: str,
    what: str,
    finished: Job[Any] | None,
    *,
    wait: bool,
    wait_seconds: float,
    plain: bool,
    summary: Mapping[str, Any] | None = None,
    announced: bool = False,
) -> None:
    """Print a job just posted (*what* it is; not again if *announced*), and
    its outcome when waited for.

    ``--json`` prints ``{id, key, service, **summary, status?, result?}``.
    Raises :class:`CLIError` (exit 1) when the job failed, saying why and
    its fail type, or did not finish within *wait_seconds*.
    """
    key = job_id.removeprefix("resources/")
    if plain:
        printed: dict[str, Any] = {"id": job_id, "key": key, "service": service, **(summary or {})}
        if finished is not None:
            printed["status"] = finished.status
            printed["result"] = finished.result
        print_json(printed, plain=True)
    else:
        if not announced:
            out_console.print(f"posted {what} as [bold]{job_id}[/] (key {key}) for {service}")
        if finished is not None:
            print_json(public_fields(finished.raw), plain=False)
        else:
            print_next_steps(job_id)
    if wait and finished is None:
        raise CLIError(
            f"{job_id} did not finish within {wait_seconds:g} s; it stays posted "
            f"(oada-jobs jobs show {job_id})",
            ExitCode.FAILED,
        )
    if finished is not None and finished.status != "success":
        result = finished.result if isinstance(finished.result, Mapping) else {}
        reason = result.get("message")
        fail_type = result.get("failType")
        message = f"{job_id} finished with status {finished.status}"
        if isinstance(reason, str) and reason:
            message += f": {reason}"
        if isinstance(fail_type, str):
            message += f" (fail type {fail_type})"
        raise CLIError(message, ExitCode.FAILED)
