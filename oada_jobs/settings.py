"""Configuration from the environment (and a ``.env`` file), for services and the CLI.

=============================  ============================================  ==========
variable                       meaning                                       default
=============================  ============================================  ==========
``OADA_DOMAIN``                the OADA server, ``https://host[:port]``      (required)
``OADA_TOKEN``                 the service's token for that server           (required)
``OADA_JOBS_CONCURRENCY``      jobs run at once                              ``10``
``OADA_JOBS_LOGGING``          extra update levels: ``debug``, ``trace``     (none)
``OADA_JOBS_METRICS_PORT``     serve Prometheus ``/metrics`` on this port    (off)
``OADA_JOBS_GRACE_PERIOD``     seconds running jobs get at shutdown          ``30``
``OADA_JOBS_LAYOUT``           job-list layout: ``classic``, ``pending``     ``classic``
``OADA_JOBS_SERVICE``          service the CLI's ``jobs``/``queues`` use     (none)
``OADA_JOBS_LOG_FORMAT``       log lines: ``text`` or ``json``               ``text``
``OADA_JOBS_LOG_LEVEL``        ``debug``, ``info``, ``warning`` or ``error``  ``info``
=============================  ============================================  ==========

Values come, highest priority first, from keyword arguments, the process
environment, and a ``.env`` file in the working directory if there is one.
``DOMAIN`` and ``TOKEN``, the names OADA services have long been configured
with, are read when ``OADA_DOMAIN`` / ``OADA_TOKEN`` are not set.

``OADA_JOBS_LOGGING`` is read as @oada/jobs reads it: the ``debug`` update
level is on when the value contains the text ``debug`` anywhere, ``trace``
likewise (case-sensitive, any separator, other words ignored), so
``"info,debug"`` and ``"debug trace"`` both work. :func:`update_levels` is
that one rule, used here and by ``ctx.log`` at each call.
The token is a :class:`~pydantic.SecretStr`: it never shows in reprs, logs or
validation errors.

>>> settings = load_settings(domain="http://127.0.0.1:8080", token="god")
>>> settings.token
SecretStr('**********')

Owns reading the environment. May use the client's domain parsing and the
layout names; must not touch the service or its queues.
"""

from __future__ import annotations

import os
from logging import Handler
from typing import Annotated, Any

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .client._common import parse_domain
from .logs import LOG_LEVELS, LogFormat, configure_logging
from .tree import LayoutName, validate_service_name

__all__ = [
    "ENV_NAMES",
    "LOGGING_ENV",
    "UPDATE_LEVELS",
    "Settings",
    "describe_error",
    "load_settings",
    "update_levels",
]

#: The variable naming the optional ``ctx.log`` update levels.
LOGGING_ENV = "OADA_JOBS_LOGGING"

#: The optional ``ctx.log`` update levels ``OADA_JOBS_LOGGING`` can turn on.
UPDATE_LEVELS = ("debug", "trace")


def update_levels(value: str | None) -> frozenset[str]:
    """The update levels *value* (an ``OADA_JOBS_LOGGING`` value) turns on.

    A level is on when its name appears anywhere in the value, exactly as
    @oada/jobs tests it; nothing is ever rejected.

    >>> sorted(update_levels("info,debug"))
    ['debug']
    >>> sorted(update_levels("debug trace"))
    ['debug', 'trace']
    """
    if not value:
        return frozenset()
    return frozenset(level for level in UPDATE_LEVELS if level in value)


class Settings(BaseSettings):
    """Everything a service or the CLI reads from the environment."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
        # Values may be secrets (the token); errors must not echo them.
        hide_input_in_errors=True,
        # Containers and CI set the empty string for "unset" too often to
        # treat it as a value.
        env_ignore_empty=True,
    )

    #: The OADA server, normalised to ``scheme://host[:port]``; ``None`` when unset.
    domain: str | None = Field(default=None, validation_alias=AliasChoices("OADA_DOMAIN", "DOMAIN"))
    #: The token for :attr:`domain`; ``None`` when unset.
    token: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("OADA_TOKEN", "TOKEN")
    )
    #: Jobs run at once (over all queues).
    concurrency: int = Field(default=10, gt=0, validation_alias="OADA_JOBS_CONCURRENCY")
    #: Extra update levels written by ``ctx.log`` (see :func:`update_levels`).
    logging: Annotated[frozenset[str], NoDecode] = Field(
        default=frozenset(), validation_alias="OADA_JOBS_LOGGING"
    )
    #: Port for Prometheus ``/metrics``; ``None`` serves no metrics.
    metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        validation_alias="OADA_JOBS_METRICS_PORT",
    )
    #: Seconds running jobs may take to finish after a stop is requested.
    grace_period: float = Field(default=30.0, ge=0, validation_alias="OADA_JOBS_GRACE_PERIOD")
    #: The job-list layout (see docs/layouts.md).
    layout: LayoutName = Field(default="classic", validation_alias="OADA_JOBS_LAYOUT")

    #: Default service name for the ``oada-jobs jobs`` and ``queues`` commands.
    service: str | None = Field(default=None, validation_alias="OADA_JOBS_SERVICE")

    #: Log lines written by ``oada-jobs run``: ``text``, or ``json`` (one object per line).
    log_format: LogFormat = Field(default="text", validation_alias="OADA_JOBS_LOG_FORMAT")
    #: Python log level of ``oada-jobs run``.
    log_level: str = Field(default="info", validation_alias="OADA_JOBS_LOG_LEVEL")

    @field_validator("log_format", mode="before")
    @classmethod
    def _check_log_format(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("log_level")
    @classmethod
    def _check_log_level(cls, value: str) -> str:
        level = value.strip().lower()
        if level not in LOG_LEVELS:
            raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}")
        return level

    @field_validator("service")
    @classmethod
    def _check_service(cls, value: str | None) -> str | None:
        return None if value is None else validate_service_name(value)

    @field_validator("domain", mode="before")
    @classmethod
    def _check_domain(cls, value: object) -> object:
        if value is None:
            return None
        if not isinstance(value, str):
            raise ValueError(f"expected a URL like https://oada.example.org, got {value!r}")
        return parse_domain(value).http

    @field_validator("token", mode="before")
    @classmethod
    def _check_token(cls, value: object) -> object:
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        if isinstance(text, str) and not text.strip():
            # Never echo the value: it is a secret even when it is wrong.
            raise ValueError("expected a non-empty token")
        if isinstance(text, str) and any(char.isspace() for char in text.strip()):
            raise ValueError("expected a token without spaces (give the token alone, no 'Bearer')")
        return text.strip() if isinstance(text, str) else value

    @field_validator("logging", mode="before")
    @classmethod
    def _check_logging(cls, value: object) -> object:
        if isinstance(value, str):
            return update_levels(value)
        if isinstance(value, list | tuple | set | frozenset):
            return update_levels(" ".join(str(part) for part in value))
        return value

    @field_validator("metrics_port", mode="before")
    @classmethod
    def _check_metrics_port(cls, value: object) -> object:
        # "off"/"none" read better than an empty string in a compose file.
        if isinstance(value, str) and value.strip().lower() in {"off", "none", "no"}:
            return None
        return value

    def token_value(self) -> str | None:
        """The token as plain text (for building a client), or ``None``."""
        return self.token.get_secret_value() if self.token is not None else None

    def explicit(self) -> set[str]:
        """Names of the fields given by keyword, environment or ``.env`` (not defaults)."""
        return set(self.model_fields_set)

    def service_options(self) -> dict[str, Any]:
        """The :meth:`~oada_jobs.Service.configure` arguments these settings set.

        Only what was set somewhere (keyword, environment, ``.env``) is
        included, so everything else keeps what the service's code chose.
        """
        explicit = self.explicit()
        options: dict[str, Any] = {}
        if self.domain is not None:
            options["domain"] = self.domain
        token = self.token_value()
        if token is not None:
            options["token"] = token
        if "concurrency" in explicit:
            options["concurrency"] = self.concurrency
        if "layout" in explicit:
            options["layout"] = self.layout
        if "metrics_port" in explicit and self.metrics_port is not None:
            options["metrics_port"] = self.metrics_port
        if "grace_period" in explicit:
            options["shutdown_grace"] = self.grace_period
        return options

    def configure_logging(self) -> Handler | None:
        """Set up log output as ``oada-jobs run`` does: ``log_level`` and ``log_format``.

        See :func:`oada_jobs.logs.configure_logging` (it leaves a logging
        set-up of your own alone).
        """
        return configure_logging(self.log_level, self.log_format)

    def export_update_levels(self) -> None:
        """Put the ``OADA_JOBS_LOGGING`` levels where ``ctx.log`` reads them.

        ``ctx.log`` reads the process environment at each call (as @oada/jobs
        does); a value that came from ``.env`` or a keyword is not there yet.
        """
        if "logging" in self.explicit():
            os.environ[LOGGING_ENV] = ",".join(sorted(self.logging))


def _env_name(alias: object) -> str:
    # The first of several names is the one documented and preferred.
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return str(alias)


#: Field name -> environment variable.
ENV_NAMES: dict[str, str] = {
    name: _env_name(field.validation_alias) for name, field in Settings.model_fields.items()
}


def load_settings(**overrides: Any) -> Settings:
    """Read :class:`Settings`, with *overrides* (by field name; ``None`` ignored) on top.

    >>> load_settings(domain="localhost:8080", token="god").domain
    'http://localhost:8080'

    Raises :class:`pydantic.ValidationError` naming the bad variable; use
    :func:`describe_error` for a message without any of the values.
    """
    unknown = sorted(set(overrides) - set(ENV_NAMES))
    if unknown:
        raise TypeError(f"unknown settings {unknown}; expected some of {sorted(ENV_NAMES)}")
    given = {ENV_NAMES[name]: value for name, value in overrides.items() if value is not None}
    return Settings(**given)


def describe_error(error: ValidationError) -> str:
    """One line per problem, ``OADA_X: what is wrong``, never quoting a value."""
    lines = []
    for problem in error.errors(include_input=False, include_url=False):
        where = ".".join(str(part) for part in problem["loc"]) or "settings"
        message = str(problem["msg"]).removeprefix("Value error, ")
        lines.append(f"{where}: {message}")
    return "\n".join(lines)
