"""ServerConfig and TokenInfo: defaults, validation, and tokens kept secret."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from oada_jobs.server.config import DEFAULT_TOKENS, ServerConfig, TokenInfo


def test_defaults() -> None:
    config = ServerConfig()
    assert config.db == ":memory:"
    assert config.quirks == "none"
    assert config.max_body_bytes == 20 * 1024 * 1024
    assert config.max_depth == 64
    assert config.ws_ping_interval == 30.0
    assert config.document_cache_size == 20_000
    assert config.tokens == DEFAULT_TOKENS
    god, abc = config.tokens["god"], config.tokens["abc"]
    assert god.user == "users/default:users_sam_321"
    assert god.bookmarks == "resources/default:resources_bookmarks_321"
    assert abc.user == "users/default:users_frank_123"
    assert abc.bookmarks == "resources/default:resources_bookmarks_123"
    assert god.scopes == abc.scopes == ("all:all",)


def test_config_is_keyword_only_strict_and_frozen() -> None:
    with pytest.raises(ValidationError):
        ServerConfig(quirks="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        ServerConfig(max_body_bytes=0)
    with pytest.raises(ValidationError):
        ServerConfig(document_cache_size=-1)
    with pytest.raises(ValidationError):
        ServerConfig(unknown=1)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        ServerConfig().db = "x"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        TokenInfo(user="sam", bookmarks="resources/x")


def test_tokens_from_plain_data_and_shares_default() -> None:
    config = ServerConfig(
        tokens={
            "t1": {"user": "users/u", "bookmarks": "resources/bm", "scopes": ["oada.yield:read"]}
        }
    )
    info = config.tokens["t1"]
    assert info.scopes == ("oada.yield:read",)
    assert info.shares_id == "resources/bm_shares"


def test_tokens_never_appear_in_reprs_or_errors() -> None:
    secret = "s3cr3t-token-value"
    config = ServerConfig(tokens={secret: TokenInfo(user="users/u", bookmarks="resources/bm")})
    assert secret not in repr(config)
    assert secret not in str(config)
    for bad in ({secret: {"user": "nobody", "bookmarks": "resources/bm"}}, {secret: 5}, {" x": {}}):
        with pytest.raises(ValidationError) as info:
            ServerConfig(tokens=bad)
        assert secret not in str(info.value)
        assert "token #1" in str(info.value)
