"""Finish reporters: tell someone when a job finished.

A reporter is any object with ``async def report(self, report: FinishReport)``.
Pass reporters to :class:`~oada_jobs.Service` (``reporters=[...]``); each is
called after a job is filed. A reporter that fails is logged and never
affects the job.

:class:`SlackReporter` posts a Slack-compatible webhook message::

    Service("email-service", ..., reporters=[SlackReporter(url, on={"failure"})])

Owns :class:`FinishReport` and the reporters. May use the job model; must
not touch the runner, the queue or the service, which calls them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from .exceptions import redact
from .job import Job
from .types import Json

if TYPE_CHECKING:
    # Only for a type: httpx is imported when a reporter first posts.
    import httpx

__all__ = ["FinishReport", "Reporter", "SlackReporter"]

logger = logging.getLogger("oada_jobs.reporters")


class _RedactSecrets(logging.Filter):
    """Masks webhook URLs in the records of the logger it is added to.

    httpx logs every request it sends (``HTTP Request: POST <url> ...``) at
    INFO on its own logger; a webhook URL is a credential.
    """

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        redacted = redact(message, *sorted(self.secrets, key=len, reverse=True))
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


_httpx_filter = _RedactSecrets()

# Slack rejects section texts longer than 3000 characters.
_SLACK_TEXT_LIMIT = 2900


@dataclass(frozen=True, slots=True)
class FinishReport:
    """What a reporter is told about a finished job."""

    #: The service name.
    service: str
    #: The OADA origin of the job's queue, e.g. ``https://oada.example.org``.
    domain: str
    #: The queue key (``"_default"`` for the service's own queue).
    queue: str
    #: The job as it was read before running.
    job: Job[Any]
    #: ``"success"`` or ``"failure"``.
    status: str
    #: The job's ``result``.
    result: Json
    #: The day list the job was filed in.
    path: str
    #: Seconds the job took, when it ran here.
    duration: float | None = None


class Reporter(Protocol):
    """Anything that can be told about a finished job."""

    async def report(self, report: FinishReport) -> None: ...


class SlackReporter:
    """POST a Slack-compatible message (``blocks``) to a webhook URL.

    :param url: the incoming-webhook URL (a secret: never logged).
    :param on: the statuses to report, ``{"failure"}`` by default.
    :param timeout: seconds for the webhook request.
    :param transport: an httpx transport, for tests.
    """

    def __init__(
        self,
        url: str,
        *,
        on: Iterable[str] = ("failure",),
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.statuses = frozenset(on)
        unknown = self.statuses - {"success", "failure"}
        if unknown:
            raise ValueError(f"expected statuses 'success' and/or 'failure', got {sorted(unknown)}")
        # Imported here: a service without a webhook need not load httpx.
        import httpx

        parsed = httpx.URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError("expected the webhook URL to be an http(s) URL")
        self._url = url
        self._timeout = timeout
        self._transport = transport
        # The path and query are the secret part; httpx logs the URL as it
        # normalised it.
        secret = parsed.raw_path.decode("ascii")
        if len(secret) > 1:
            _httpx_filter.secrets.update({url, str(parsed), secret})
        else:
            _httpx_filter.secrets.update({url, str(parsed)})
        httpx_logger = logging.getLogger("httpx")
        if _httpx_filter not in httpx_logger.filters:
            httpx_logger.addFilter(_httpx_filter)

    def __repr__(self) -> str:
        return f"SlackReporter(on={sorted(self.statuses)})"

    def message(self, report: FinishReport) -> dict[str, Any]:
        """The webhook body for *report*."""
        job = report.job
        text = (
            f"Service *{report.service}* on *{report.domain}*: job *{job.key}* "
            f"(type `{job.type}`) finished with *{report.status}*"
        )
        detail = json.dumps(
            {"job": job.oada_id, "config": job.raw.get("config"), "result": report.result},
            indent=2,
            default=str,
        )
        if len(detail) > _SLACK_TEXT_LIMIT:
            detail = detail[:_SLACK_TEXT_LIMIT] + "\n…"
        return {
            "text": text,
            "blocks": [
                {"type": "section", "text": {"type": "mrkdwn", "text": text}},
                {"type": "divider"},
                {
                    "type": "section",
                    "text": {"type": "mrkdwn", "text": f"<{report.domain}{report.path}>"},
                },
            ],
            "attachments": [
                {
                    "blocks": [
                        {
                            "type": "section",
                            "text": {"type": "mrkdwn", "text": f"```{detail}```"},
                        }
                    ]
                }
            ],
        }

    async def report(self, report: FinishReport) -> None:
        """Post the message if *report*'s status is one this reporter is for."""
        if report.status not in self.statuses:
            return
        import httpx

        async with httpx.AsyncClient(timeout=self._timeout, transport=self._transport) as http:
            response = await http.post(self._url, json=self.message(report))
        if response.status_code >= 400:
            # The URL is a credential: name the status only.
            logger.error(
                "Slack webhook answered %s for job %s", response.status_code, report.job.key
            )
