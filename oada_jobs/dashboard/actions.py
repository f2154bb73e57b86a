"""The dashboard's actions: cancel or retry a job, pause or resume a
service's types, and log in and out.

Each action is a GET that shows a confirmation form and a POST that does
it; every POST carries the session's CSRF token (and passes the origin
check of ``security.py``). Writes go only through the framework's public
functions (:func:`~oada_jobs.job.request_cancel`,
:func:`~oada_jobs.requester.post_job`, :func:`~oada_jobs.control.set_paused`).
Must not import ``app.py``, which routes to these.
"""

from __future__ import annotations

import logging
import secrets

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

from ..client import OADAClient
from ..control import Control, control_path, parse_control, set_paused
from ..exceptions import NotFound, OADAError, OADAJobsError
from ..job import request_cancel
from ..requester import post_job
from .security import (
    check_csrf,
)
from .site import dashboard_of, key_param, read_form, service_param

__all__ = [
    "confirm_action",
    "confirm_control",
    "do_action",
    "do_control",
    "login",
    "login_form",
    "logout",
    "read_control",
]

logger = logging.getLogger("oada_jobs.dashboard")


_ACTIONS = {
    "cancel": "Cancel this job? A pending job is filed as a failure of type 'cancelled' at "
    "once; a running one within about a second.",
    "retry": "Post a new job with the same service, type, config and options?",
}


async def confirm_action(request: Request) -> Response:
    dashboard = dashboard_of(request)
    key = key_param(request)
    action = request.path_params["action"]
    if action not in _ACTIONS:
        return dashboard.error(request, 404, "no such action")
    try:
        detail = await dashboard.reader.job(key)
    except OADAError as error:
        return dashboard.oada_error(request, error)
    if detail is None:
        return dashboard.error(request, 404, f"there is no job resources/{key}")
    return dashboard.render(
        request, "confirm.html", job=detail, action=action, question=_ACTIONS[action]
    )


async def do_action(request: Request) -> Response:
    dashboard = dashboard_of(request)
    key = key_param(request)
    action = request.path_params["action"]
    if action not in _ACTIONS:
        return dashboard.error(request, 404, "no such action")
    form = await read_form(request)
    if not check_csrf(request, form.get("csrf")):
        return dashboard.error(request, 403, "the form has expired or did not come from this page")
    job_url = request.app.router.url_path_for("job", key=key)
    root = request.scope.get("root_path", "")
    try:
        detail = await dashboard.reader.job(key)
        if detail is None or detail.job is None:
            return dashboard.error(request, 404, f"there is no job resources/{key} to {action}")
        job = detail.job
        if action == "cancel":
            cancelled = await request_cancel(
                dashboard.oada, job.oada_id, "cancelled in the dashboard"
            )
            logger.info("dashboard: cancel of %s asked (%s)", job.oada_id, cancelled)
            return RedirectResponse(root + str(job_url), status_code=303)
        if not detail.retryable:
            return dashboard.error(request, 409, "only a failed job can be retried")
        layout = await dashboard.reader.layout(job.service)
        options = job.options if job.options.to_json() else None
        new_id = await post_job(
            dashboard.oada,
            job.service,
            job.type,
            job.raw.get("config") or {},
            layout=layout.name,
            options=options,
            extra={"retryOf": {"_id": job.oada_id}},
        )
    except OADAError as error:
        return dashboard.oada_error(request, error)
    except OADAJobsError as error:
        # The job changed under the action (e.g. it kept changing while being
        # cancelled, or stopped being a job): say so rather than fail.
        return dashboard.error(request, 409, f"could not {action} resources/{key}: {error}")
    logger.info("dashboard: %s retried as %s", job.oada_id, new_id)
    new_url = request.app.router.url_path_for("job", key=new_id.removeprefix("resources/"))
    return RedirectResponse(root + str(new_url), status_code=303)


async def read_control(oada: OADAClient, service: str) -> Control:
    """What the service's control resource says (nothing paused when it is missing)."""
    try:
        data = (await oada.get(control_path(service))).data
    except NotFound:
        return Control()
    return parse_control(data, Control())[0]


_CONTROL_ACTIONS = {
    "pause": "Stop starting jobs of {what} on every replica? Pending jobs stay pending; "
    "running ones finish.",
    "resume": "Start jobs of {what} again on every replica?",
}


def _control_request(request: Request, job_type: str) -> tuple[str, str] | Response:
    dashboard = dashboard_of(request)
    action = request.path_params["action"]
    if action not in _CONTROL_ACTIONS:
        return dashboard.error(request, 404, "no such action")
    what = f"type {job_type!r}" if job_type else "every type"
    return action, _CONTROL_ACTIONS[action].format(what=what)


async def confirm_control(request: Request) -> Response:
    service = service_param(request)
    job_type = request.query_params.get("type", "")
    checked = _control_request(request, job_type)
    if isinstance(checked, Response):
        return checked
    action, question = checked
    return dashboard_of(request).render(
        request,
        "confirm_control.html",
        service=service,
        action=action,
        job_type=job_type,
        question=question,
    )


async def do_control(request: Request) -> Response:
    dashboard = dashboard_of(request)
    service = service_param(request)
    form = await read_form(request)
    if not check_csrf(request, form.get("csrf")):
        return dashboard.error(request, 403, "the form has expired or did not come from this page")
    job_type = form.get("type", "")
    checked = _control_request(request, job_type)
    if isinstance(checked, Response):
        return checked
    action, _ = checked
    try:
        await set_paused(dashboard.oada, service, action == "pause", [job_type] if job_type else [])
    except ValueError as error:
        return dashboard.error(request, 400, str(error))
    except OADAError as error:
        return dashboard.oada_error(request, error)
    logger.info("dashboard: %s of %s (%s) asked", action, service, job_type or "every type")
    url = request.app.router.url_path_for("service", service=service)
    return RedirectResponse(request.scope.get("root_path", "") + str(url), status_code=303)


async def login_form(request: Request) -> Response:
    dashboard = dashboard_of(request)
    if not dashboard.login_required:
        return RedirectResponse(request.scope.get("root_path", "") + "/", status_code=303)
    return dashboard.render(request, "login.html", failed=False)


async def login(request: Request) -> Response:
    dashboard = dashboard_of(request)
    secret = dashboard.config.login_secret
    if secret is None:
        return RedirectResponse(request.scope.get("root_path", "") + "/", status_code=303)
    if dashboard.throttle.blocked():
        return PlainTextResponse("too many failed logins; wait a minute", status_code=429)
    form = await read_form(request)
    given = form.get("secret", "")
    if not check_csrf(request, form.get("csrf")) or not secrets.compare_digest(
        given.encode(), secret.get_secret_value().encode()
    ):
        dashboard.throttle.failed()
        return dashboard.render(request, "login.html", 403, failed=True)
    request.session.clear()
    request.session["login"] = True
    return RedirectResponse(request.scope.get("root_path", "") + "/", status_code=303)


async def logout(request: Request) -> Response:
    form = await read_form(request)
    if not check_csrf(request, form.get("csrf")):
        return PlainTextResponse("the form has expired", status_code=403)
    request.session.clear()
    return RedirectResponse(request.scope.get("root_path", "") + "/login", status_code=303)
