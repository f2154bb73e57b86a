"""Settings from flags, the environment and .env; secrets never shown."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from oada_jobs import Job, Json, Service, WorkerContext
from oada_jobs.cli.run import apply_settings
from oada_jobs.client import OADAClient
from oada_jobs.context import enabled_levels
from oada_jobs.settings import (
    ENV_NAMES,
    Settings,
    describe_error,
    load_settings,
    update_levels,
)
from oada_jobs.testing import EmbeddedServer, post_job, wait_for_job


def test_defaults_without_anything_set() -> None:
    settings = load_settings()
    assert settings.domain is None
    assert settings.token is None
    assert settings.concurrency == 10
    assert settings.logging == frozenset()
    assert settings.metrics_port is None
    assert settings.grace_period == 30.0
    assert settings.layout == "classic"
    assert settings.explicit() == set()


def test_environment_is_read_and_normalised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OADA_DOMAIN", "localhost:8080")
    monkeypatch.setenv("OADA_TOKEN", " god ")
    monkeypatch.setenv("OADA_JOBS_CONCURRENCY", "3")
    monkeypatch.setenv("OADA_JOBS_LOGGING", "info,debug trace")
    monkeypatch.setenv("OADA_JOBS_METRICS_PORT", "9100")
    monkeypatch.setenv("OADA_JOBS_GRACE_PERIOD", "2.5")
    monkeypatch.setenv("OADA_JOBS_LAYOUT", "pending")
    monkeypatch.setenv("OADA_JOBS_SERVICE", "email-service")
    monkeypatch.setenv("OADA_JOBS_LOG_FORMAT", "JSON")
    monkeypatch.setenv("OADA_JOBS_LOG_LEVEL", "Warning")
    settings = load_settings()
    assert settings.domain == "http://localhost:8080"
    assert settings.token_value() == "god"
    assert settings.concurrency == 3
    assert settings.logging == {"debug", "trace"}
    assert settings.metrics_port == 9100
    assert settings.grace_period == 2.5
    assert settings.layout == "pending"
    assert settings.service == "email-service"
    assert settings.log_format == "json"
    assert settings.log_level == "warning"
    assert settings.explicit() == set(ENV_NAMES)


def test_flags_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OADA_DOMAIN", "https://env.example.org")
    monkeypatch.setenv("OADA_JOBS_CONCURRENCY", "3")
    settings = load_settings(domain="https://flag.example.org", concurrency=None)
    assert settings.domain == "https://flag.example.org"
    assert settings.concurrency == 3


def test_dotenv_file_is_read_and_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".env").write_text(
        "OADA_DOMAIN=https://dotenv.example.org\nOADA_TOKEN=from-file\nOADA_JOBS_METRICS_PORT=off\n"
        "UNRELATED=1\n"
    )
    monkeypatch.chdir(tmp_path)
    settings = load_settings()
    assert settings.domain == "https://dotenv.example.org"
    assert settings.token_value() == "from-file"
    assert settings.metrics_port is None
    monkeypatch.setenv("OADA_TOKEN", "from-env")
    assert load_settings().token_value() == "from-env"


def test_domain_and_token_are_fallbacks(monkeypatch: pytest.MonkeyPatch) -> None:
    # The names OADA services are configured with elsewhere.
    monkeypatch.setenv("DOMAIN", "https://fallback.example.org")
    monkeypatch.setenv("TOKEN", "fallback-token")
    monkeypatch.setenv("LAYOUT", "pending")
    settings = load_settings()
    assert settings.domain == "https://fallback.example.org"
    assert settings.token_value() == "fallback-token"
    assert settings.explicit() >= {"domain", "token"}
    # Other settings have no unprefixed name.
    assert settings.layout == "classic"


def test_prefixed_names_win_over_the_fallbacks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOMAIN", "https://fallback.example.org")
    monkeypatch.setenv("TOKEN", "fallback-token")
    monkeypatch.setenv("OADA_DOMAIN", "https://oada.example.org")
    monkeypatch.setenv("OADA_TOKEN", "oada-token")
    settings = load_settings()
    assert settings.domain == "https://oada.example.org"
    assert settings.token_value() == "oada-token"
    # And flags win over both.
    assert load_settings(token="flag-token").token_value() == "flag-token"


def test_fallback_token_is_checked_and_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKEN", "Bearer s3cret")
    with pytest.raises(ValidationError) as caught:
        load_settings()
    message = describe_error(caught.value)
    assert "expected a token without spaces" in message
    assert "s3cret" not in message
    assert "s3cret" not in str(caught.value)


@pytest.mark.parametrize(
    ("value", "levels"),
    [
        ("debug", {"debug"}),
        ("trace", {"trace"}),
        ("info,debug", {"debug"}),
        ("debug trace", {"debug", "trace"}),
        ("debug,trace", {"debug", "trace"}),
        ("debug;trace", {"debug", "trace"}),
        ("info", set()),
        ("verbose", set()),
        # @oada/jobs tests for the text, case-sensitively.
        ("DEBUG", set()),
        ("nodebug", {"debug"}),
        ("*:trace", {"trace"}),
    ],
)
def test_logging_is_read_as_oada_jobs_reads_it(
    value: str, levels: set[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert update_levels(value) == levels
    monkeypatch.setenv("OADA_JOBS_LOGGING", value)
    assert load_settings().logging == levels
    # ctx.log reads the same variable by the same rule.
    assert enabled_levels() == levels


def test_token_never_shows() -> None:
    settings = load_settings(domain="http://127.0.0.1:8080", token="s3cret-token")
    assert "s3cret-token" not in repr(settings)
    assert "s3cret-token" not in str(settings)
    assert "s3cret-token" not in settings.model_dump_json()


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"token": "Bearer s3cret"}, "OADA_TOKEN: expected a token without spaces"),
        ({"token": "   "}, "OADA_TOKEN: expected a non-empty token"),
        ({"concurrency": 0}, "OADA_JOBS_CONCURRENCY: Input should be greater than 0"),
        ({"layout": "flat"}, "OADA_JOBS_LAYOUT: Input should be 'classic' or 'pending'"),
        ({"metrics_port": 70000}, "OADA_JOBS_METRICS_PORT: Input should be less than"),
        ({"grace_period": -1}, "OADA_JOBS_GRACE_PERIOD: Input should be greater than"),
        ({"domain": "ftp://x"}, "OADA_DOMAIN:"),
        ({"service": "no spaces please"}, "OADA_JOBS_SERVICE: expected a service name"),
        ({"log_format": "xml"}, "OADA_JOBS_LOG_FORMAT: Input should be 'text' or 'json'"),
        ({"log_level": "loud"}, "OADA_JOBS_LOG_LEVEL: expected one of debug, info"),
    ],
)
def test_bad_values_name_the_variable_never_the_value(
    overrides: dict[str, object], expected: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        load_settings(**overrides)
    message = describe_error(caught.value)
    assert message.startswith(expected)
    assert "s3cret" not in message
    assert "s3cret" not in str(caught.value)


def test_unknown_override_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="unknown settings"):
        load_settings(domian="x")


def test_settings_is_frozen() -> None:
    settings = Settings()
    with pytest.raises(ValidationError):
        settings.concurrency = 4  # type: ignore[misc]


def test_from_env_applies_what_oada_jobs_run_applies(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOMAIN", "https://oada.example.org")
    monkeypatch.setenv("OADA_TOKEN", "svc-token")
    monkeypatch.setenv("OADA_JOBS_CONCURRENCY", "7")
    monkeypatch.setenv("OADA_JOBS_LAYOUT", "pending")
    monkeypatch.setenv("OADA_JOBS_GRACE_PERIOD", "4")
    service = Service.from_env("svc", concurrency=3, lease=90, metrics_registry=CollectorRegistry())
    assert service.domain == "https://oada.example.org"
    assert service.token == "svc-token"
    # The environment wins over the code, as under `oada-jobs run` ...
    assert service.config.concurrency == 7
    assert service.config.shutdown_grace == 4
    assert service.layout.name == "pending"
    # ... and what it does not set keeps what the code chose.
    assert service.config.lease.total_seconds() == 90
    assert service.config.metrics_port is None

    by_cli = Service("svc", concurrency=3, lease=90, metrics_registry=CollectorRegistry())
    apply_settings(by_cli, load_settings())
    assert by_cli.config == service.config
    assert (by_cli.domain, by_cli.token) == (service.domain, service.token)


def test_from_env_takes_update_levels_from_dotenv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".env").write_text("OADA_JOBS_LOGGING=info,debug\n")
    monkeypatch.chdir(tmp_path)
    # Recorded, so the value from_env exports is undone after the test.
    monkeypatch.setenv("OADA_JOBS_LOGGING", "")
    monkeypatch.delenv("OADA_JOBS_LOGGING")
    Service.from_env("svc", metrics_registry=CollectorRegistry())
    assert enabled_levels() == {"debug"}


def test_from_env_names_a_bad_variable_never_its_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OADA_TOKEN", "Bearer s3cret")
    with pytest.raises(ValidationError) as caught:
        Service.from_env("svc", metrics_registry=CollectorRegistry())
    assert "OADA_TOKEN" in describe_error(caught.value)
    assert "s3cret" not in str(caught.value)


async def test_a_service_from_env_runs_in_its_own_event_loop(
    server: EmbeddedServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OADA_DOMAIN", server.url)
    monkeypatch.setenv("OADA_TOKEN", server.token)
    service = Service.from_env("from-env-svc", metrics_registry=CollectorRegistry())

    @service.on("echo", timeout=10)
    async def echo(job: Job[Any], ctx: WorkerContext) -> Json:
        return {"echo": job.config}

    def user_program() -> None:
        # What a user's own entry point does instead of `oada-jobs run`.
        async def main() -> None:
            async with anyio.create_task_group() as group:
                await group.start(partial(service.run, handle_signals=False))
                async with OADAClient(server.url, server.token) as oada:
                    job_id = await post_job(oada, "from-env-svc", "echo", {"n": 1})
                    job = await wait_for_job(oada, job_id, 20)
                assert job.result == {"echo": {"n": 1}}
                await service.stop()

        anyio.run(main)

    with anyio.fail_after(40):
        await anyio.to_thread.run_sync(user_program)
