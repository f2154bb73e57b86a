"""Settings from flags, the environment and .env; secrets never shown."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from oada_jobs.runner import enabled_levels
from oada_jobs.settings import (
    ENV_NAMES,
    Settings,
    describe_error,
    load_settings,
    update_levels,
)


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
    settings = load_settings()
    assert settings.domain == "http://localhost:8080"
    assert settings.token_value() == "god"
    assert settings.concurrency == 3
    assert settings.logging == {"debug", "trace"}
    assert settings.metrics_port == 9100
    assert settings.grace_period == 2.5
    assert settings.layout == "pending"
    assert settings.service == "email-service"
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
