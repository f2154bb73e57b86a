"""The dashboard's settings: every size and time limit, with its default, in one place.

This module owns :class:`DashboardConfig` and nothing else; the code that
enforces a limit names the field it uses.

Imports nothing from the package; must not do I/O.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

__all__ = ["LOGIN_SECRET_MIN_CHARS", "DashboardConfig"]

#: Shortest login secret accepted (characters).
LOGIN_SECRET_MIN_CHARS = 16


class DashboardConfig(BaseModel):
    """How a dashboard behaves; every field has a default.

    Limits bound what one page view may cost the OADA server and the
    dashboard: how many jobs a page reads and watches, how many days a page
    counts, how many browsers may follow live changes at once.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Secret of the login form; ``None`` serves without a login (loopback only,
    #: which :func:`~oada_jobs.dashboard.check_bind` enforces for the command).
    login_secret: SecretStr | None = None
    #: Key that signs session cookies; a random one per process when ``None``
    #: (sessions then end when the dashboard restarts).
    session_key: SecretStr | None = None
    #: Seconds a login lasts.
    session_max_age: int = Field(default=12 * 3600, ge=60)
    #: Send the session cookie over HTTPS only (set behind a TLS proxy).
    secure_cookies: bool = False
    #: Host names the dashboard answers to (``Host`` header); ``None`` for the
    #: loopback names only (which keeps DNS-rebinding pages out).
    allowed_hosts: tuple[str, ...] | None = None
    #: Seconds one OADA request may take before the page says OADA cannot be read.
    oada_timeout: float = Field(default=15.0, gt=0)
    #: Retries of a failed OADA request (a page answers soon when OADA is down).
    oada_retries: int = Field(default=2, ge=0)
    #: Seconds the client keeps re-issuing a dropped watch before giving it up
    #: (the dashboard then opens it again, with backoff).
    watch_deadline: float = Field(default=30.0, gt=0)
    #: Pending jobs read per service page (the oldest, which run first).
    max_list_jobs: int = Field(default=100, ge=1, le=10_000)
    #: Finished jobs listed per service page (the newest of the chosen days).
    max_finished_rows: int = Field(default=50, ge=1, le=10_000)
    #: Pending jobs a live service page watches individually (to see them start).
    max_watched_jobs: int = Field(default=50, ge=0, le=1_000)
    #: Services the overview lists and watches.
    max_services: int = Field(default=50, ge=1, le=1_000)
    #: Longest range of days a service page counts.
    max_days: int = Field(default=31, ge=1, le=366)
    #: Finished jobs remembered between renders (a job filed with a link rev
    #: already read is not read again).
    job_cache_entries: int = Field(default=5_000, ge=0)
    #: Jobs read from OADA at once.
    read_concurrency: int = Field(default=16, ge=1, le=256)
    #: Browsers following live changes at once (more get 503).
    max_streams: int = Field(default=32, ge=1, le=10_000)
    #: Seconds between keep-alive comments on an idle live stream.
    stream_keepalive: float = Field(default=15.0, gt=0)
    #: Seconds changes are gathered before the browser is told (one re-render per burst).
    stream_coalesce: float = Field(default=0.25, ge=0)
    #: Seconds before a failed OADA watch or health probe is tried again (first, then doubled).
    retry_initial: float = Field(default=0.5, gt=0)
    #: Most seconds between such tries.
    retry_max: float = Field(default=10.0, gt=0)
    #: Bytes of a job's config, result or update shown; longer JSON is cut.
    max_json_bytes: int = Field(default=200_000, ge=1_000)
    #: Failed logins allowed per minute over all clients before the form answers 429.
    login_attempts_per_minute: int = Field(default=10, ge=1)
    #: Bytes of a form body read (forms carry a CSRF token and a login secret).
    max_form_bytes: int = Field(default=16 * 1024, ge=1_024)
    #: Seconds open requests get to end when the dashboard stops (live
    #: streams end at once; this bounds a page still being read).
    shutdown_grace: int = Field(default=2, ge=0)

    @field_validator("login_secret")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < LOGIN_SECRET_MIN_CHARS:
            raise ValueError(
                f"expected a login secret of at least {LOGIN_SECRET_MIN_CHARS} characters"
            )
        return value
