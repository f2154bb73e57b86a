"""Log output of a service process: text for people, JSON lines for log pipelines.

Owns the formatters and :func:`configure_logging`, which ``oada-jobs run``
calls and a program running its own service may call. It configures the
root logger only when asked, and never changes what a record carries: the
job context (``service``, ``queue``, ``job_id``, ``job_key``, ``job_type``,
``trace_id``) is bound by the queue's and runner's logger adapters.

``OADA_JOBS_LOG_FORMAT=json`` (or ``--log-format json``) writes one JSON
object per line to stderr::

    {"time": "2026-01-05T10:00:00.123Z", "level": "INFO", "logger": "oada_jobs",
     "message": "job finished: success", "service": "email-service",
     "queue": "_default", "job_id": "resources/2a...", "job_key": "2a...",
     "job_type": "email", "trace_id": "4bf9..."}

Any other ``extra=`` a record was given is a field too; values that are not
JSON become their ``repr``. An exception adds ``exception`` (the formatted
traceback). ``OADA_JOBS_LOG_LEVEL`` (or ``--log-level``) sets the level.

Imports nothing from the package and must not touch a service; a process
calls it once.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import IO, Any, Literal

__all__ = ["LOG_FORMATS", "LOG_LEVELS", "JSONFormatter", "LogFormat", "configure_logging"]

#: Output formats: ``text`` lines for a terminal, ``json`` lines for a pipeline.
LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")
#: Levels accepted by name (any case).
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"

# What every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


class JSONFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, then the bound fields.

    >>> record = logging.makeLogRecord({"msg": "hi", "levelname": "INFO", "job_id": "resources/1"})
    >>> json.loads(JSONFormatter().format(record))["job_id"]
    'resources/1'
    """

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        fields: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": _without_prefix(message, record),
        }
        for name, value in record.__dict__.items():
            if name not in _STANDARD and not name.startswith("_") and name not in fields:
                fields[name] = value
        if record.exc_info:
            fields["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            fields["exception"] = record.exc_text
        if record.stack_info:
            fields["stack"] = self.formatStack(record.stack_info)
        return json.dumps(fields, default=repr, ensure_ascii=False)


def _without_prefix(message: str, record: logging.LogRecord) -> str:
    """The message without the ``[service/job]`` prefix text lines carry: JSON has fields."""
    service = getattr(record, "service", None)
    job = getattr(record, "job_key", None) or getattr(record, "job_id", None)
    prefix = f"[{service}/{job}] "
    if service is not None and job is not None and message.startswith(prefix):
        return message[len(prefix) :]
    return message


def configure_logging(
    level: str | int = "info",
    format: LogFormat = "text",
    *,
    stream: IO[str] | None = None,
) -> logging.Handler | None:
    """Log to *stream* (default stderr) at *level* in *format*; return the handler.

    Like :func:`logging.basicConfig`, it adds a handler only when the root
    logger has none yet (or only one from an earlier call, which it
    replaces); with a logging set-up of your own it only sets the level and
    returns ``None``. Unless the level is ``debug``, the ``httpx`` logger is
    kept at WARNING (a line per request drowns the rest).
    """
    if format not in LOG_FORMATS:
        raise ValueError(f"expected a log format in {list(LOG_FORMATS)}, got {format!r}")
    if isinstance(level, str):
        if level.lower() not in LOG_LEVELS:
            raise ValueError(f"expected a log level in {list(LOG_LEVELS)}, got {level!r}")
        number = int(logging.getLevelName(level.upper()))
    else:
        number = level
    root = logging.getLogger()
    root.setLevel(number)
    logging.getLogger("httpx").setLevel(
        logging.NOTSET if number <= logging.DEBUG else logging.WARNING
    )
    ours = [handler for handler in root.handlers if isinstance(handler, _ServiceHandler)]
    if len(ours) != len(root.handlers):
        return None
    for handler in ours:
        root.removeHandler(handler)
    installed = _ServiceHandler(stream if stream is not None else sys.stderr)
    installed.setFormatter(JSONFormatter() if format == "json" else logging.Formatter(TEXT_FORMAT))
    root.addHandler(installed)
    return installed


class _ServiceHandler(logging.StreamHandler):  # type: ignore[type-arg]  # IO[str] stream
    """The handler :func:`configure_logging` installs (so a second call replaces it)."""
