"""An email job service: ``email`` jobs in, messages out.

Run it against any OADA server (the embedded one works)::

    oada-jobs serve &                                  # http://127.0.0.1:8080, token god
    OADA_DOMAIN=http://127.0.0.1:8080 OADA_TOKEN=god \\
        oada-jobs run examples.email_service:service
    oada-jobs jobs post email -s email-service \\
        --config '{"to": ["ada@example.org"], "subject": "Hi", "text": "Hello"}'

A job's ``config`` is validated by :class:`EmailConfig`; a config that does
not validate fails the job (fail type ``invalid-config``) without calling the
work function. Messages go through a pluggable backend:

* by default :class:`OutboxBackend` writes each message as an ``.eml`` file
  to ``$EMAIL_OUTBOX`` (default ``./outbox``) — no mail server needed;
* with ``EMAIL_SMTP_HOST`` set, :class:`SMTPBackend` sends it by SMTP
  (``EMAIL_SMTP_PORT``, ``EMAIL_SMTP_USER``, ``EMAIL_SMTP_PASSWORD``,
  ``EMAIL_SMTP_STARTTLS``), in a worker thread so the service stays responsive.

Use :func:`use_backend` to plug in your own (anything with an async
``send(message) -> str``).
"""

from __future__ import annotations

import os
import smtplib
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Protocol

import anyio
import anyio.to_thread
from pydantic import BaseModel, ConfigDict, Field, field_validator

from oada_jobs import Job, JobError, Json, Service, WorkerContext

#: Addresses are checked loosely (``local@domain``); the mail server has the last word.
_ADDRESS = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"


class EmailConfig(BaseModel):
    """The ``config`` of an ``email`` job."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    #: Recipients, at least one.
    to: list[str] = Field(min_length=1)
    #: Subject line.
    subject: str = Field(min_length=1, max_length=998)
    #: Plain-text body.
    text: str = ""
    #: Sender; the backend's default when not given.
    sender: str | None = Field(default=None, alias="from", pattern=_ADDRESS)

    @field_validator("to")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        import re

        bad = [address for address in value if not re.fullmatch(_ADDRESS, address)]
        if bad:
            raise ValueError(f"expected addresses like name@example.org, got {bad}")
        return value


class RecipientRefused(Exception):
    """The backend will not deliver to these recipients (a permanent failure)."""

    def __init__(self, recipients: list[str], reason: str) -> None:
        super().__init__(f"{reason}: {', '.join(recipients)}")
        self.recipients = recipients
        self.reason = reason


class EmailBackend(Protocol):
    """Where messages go. ``send`` returns the message id."""

    async def send(self, message: EmailMessage) -> str: ...


class OutboxBackend:
    """Writes each message to ``<outbox>/<message id>.eml``: a mail server for development.

    Like a real server it refuses recipients in the reserved ``.invalid``
    top-level domain (RFC 2606), which can never receive mail.
    """

    def __init__(self, outbox: str | os.PathLike[str] = "outbox") -> None:
        self.outbox = Path(outbox)

    async def send(self, message: EmailMessage) -> str:
        recipients = [str(address) for address in message.get_all("To", [])]
        refused = [address for address in recipients if address.lower().endswith(".invalid")]
        if refused:
            raise RecipientRefused(refused, "no such domain")
        message_id = str(message["Message-ID"])
        path = anyio.Path(self.outbox) / f"{message_id.strip('<>').replace('@', '_at_')}.eml"
        await path.parent.mkdir(parents=True, exist_ok=True)
        await path.write_bytes(message.as_bytes())
        return message_id


class SMTPBackend:
    """Sends through an SMTP server with :mod:`smtplib`, in a worker thread."""

    def __init__(
        self,
        host: str,
        port: int = 587,
        *,
        username: str | None = None,
        password: str | None = None,
        starttls: bool = True,
        timeout: float = 30.0,
    ) -> None:
        self.host = host
        self.port = port
        self.username = username
        self._password = password
        self.starttls = starttls
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"SMTPBackend({self.host!r}, {self.port})"

    def _send(self, message: EmailMessage) -> str:
        with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
            if self.starttls:
                smtp.starttls()
            if self.username and self._password:
                smtp.login(self.username, self._password)
            try:
                smtp.send_message(message)
            except smtplib.SMTPRecipientsRefused as error:
                raise RecipientRefused(list(error.recipients), "refused by the server") from None
        return str(message["Message-ID"])

    async def send(self, message: EmailMessage) -> str:
        # smtplib blocks; a thread keeps other jobs and lease renewals going.
        # abandon_on_cancel lets a timed-out job end now; the thread finishes
        # on its own, and its result is dropped.
        return await anyio.to_thread.run_sync(self._send, message, abandon_on_cancel=True)


def backend_from_env() -> EmailBackend:
    """SMTP when ``EMAIL_SMTP_HOST`` is set, else the outbox directory."""
    host = os.environ.get("EMAIL_SMTP_HOST")
    if host:
        return SMTPBackend(
            host,
            int(os.environ.get("EMAIL_SMTP_PORT", "587")),
            username=os.environ.get("EMAIL_SMTP_USER"),
            password=os.environ.get("EMAIL_SMTP_PASSWORD"),
            starttls=os.environ.get("EMAIL_SMTP_STARTTLS", "true").lower() != "false",
        )
    return OutboxBackend(os.environ.get("EMAIL_OUTBOX", "outbox"))


_backend: EmailBackend | None = None


def use_backend(backend: EmailBackend | None) -> None:
    """Send through *backend* from now on (``None``: decide from the environment again)."""
    global _backend
    _backend = backend


def backend() -> EmailBackend:
    """The backend in use (chosen from the environment on first use)."""
    global _backend
    if _backend is None:
        _backend = backend_from_env()
    return _backend


#: Default sender when a job gives none.
DEFAULT_SENDER = os.environ.get("EMAIL_FROM", "oada-jobs@example.org")


def build_message(config: EmailConfig) -> EmailMessage:
    """The message an ``email`` job asks for."""
    message = EmailMessage()
    message["From"] = config.sender or DEFAULT_SENDER
    message["To"] = ", ".join(config.to)
    message["Subject"] = config.subject
    message["Message-ID"] = make_msgid(domain="oada-jobs.local")
    message.set_content(config.text)
    return message


# The domain and token come from `oada-jobs run` (flags or OADA_DOMAIN/OADA_TOKEN).
service = Service("email-service")


async def send_email(job: Job[EmailConfig], ctx: WorkerContext) -> Json:
    """Send the message a job describes; the job's result says where it went."""
    message = build_message(job.config)
    await ctx.log.info("sending", {"to": job.config.to, "subject": job.config.subject})
    try:
        message_id = await backend().send(message)
    except RecipientRefused as error:
        # A permanent failure: filed under typed-failure/recipient-refused.
        raise JobError(
            str(error), "recipient-refused", details={"refused": error.recipients}
        ) from None
    return {"messageId": message_id, "to": job.config.to}


service.on("email", 10, send_email)
