"""Construction: domains, tokens, options, lifecycle; no I/O needed."""

from __future__ import annotations

import ssl
import subprocess
import sys
from pathlib import Path

import certifi
import httpx
import pytest
from client_helpers import TOKEN, json_response, mock_client

from oada_jobs import __version__
from oada_jobs.client import ClientState, OADAClient
from oada_jobs.client._common import make_ssl_context, parse_domain
from oada_jobs.exceptions import ClientClosed
from oada_jobs.server.tls import self_signed


@pytest.mark.parametrize(
    ("domain", "http", "ws"),
    [
        ("https://oada.example.org", "https://oada.example.org", "wss://oada.example.org/"),
        ("https://oada.example.org/", "https://oada.example.org", "wss://oada.example.org/"),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080", "ws://127.0.0.1:8080/"),
        ("oada.example.org", "https://oada.example.org", "wss://oada.example.org/"),
        ("oada.example.org:8443", "https://oada.example.org:8443", "wss://oada.example.org:8443/"),
        ("localhost:3000", "http://localhost:3000", "ws://localhost:3000/"),
        ("127.0.0.1:8080", "http://127.0.0.1:8080", "ws://127.0.0.1:8080/"),
        ("http://[::1]:8080", "http://[::1]:8080", "ws://[::1]:8080/"),
    ],
)
def test_domain_forms(domain: str, http: str, ws: str) -> None:
    base = parse_domain(domain)
    assert (base.http, base.ws) == (http, ws)


@pytest.mark.parametrize(
    ("domain", "complaint"),
    [
        ("", "empty"),
        ("ftp://host", "scheme 'ftp'"),
        ("http://", "host name"),
        ("http://host:99999", "https://host:port"),
        ("http://host:abc", "https://host:port"),
        ("https://host/some/path", "bare origin"),
        ("https://host?x=1", "bare origin"),
        ("https://user:pw@host", "without credentials"),
        ("not a domain", "host name"),
        ("x y", "host name"),
        ("http://exa$mple.org", "host name"),
        ("http://-bad-.org", "host name"),
    ],
)
def test_malformed_domain_is_a_clear_value_error(domain: str, complaint: str) -> None:
    with pytest.raises(ValueError, match="expected") as info:
        OADAClient(domain, TOKEN)
    assert complaint in str(info.value)


@pytest.mark.parametrize("token", ["", "two words", "line\nbreak", None, 5])
def test_bad_token_is_refused_without_echoing_it(token: object) -> None:
    with pytest.raises(ValueError, match="token") as info:
        OADAClient("http://127.0.0.1:1", token)  # type: ignore[arg-type]
    if isinstance(token, str) and token:
        assert token not in str(info.value)


@pytest.mark.parametrize(
    "options",
    [
        {"concurrency": 0},
        {"timeout": 0},
        {"connection": "carrier-pigeon"},
        {"retries": -1},
        {"watch_deadline": -5},
    ],
)
def test_bad_options_raise_value_error(options: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="invalid OADAClient option"):
        OADAClient("http://127.0.0.1:1", TOKEN, **options)  # type: ignore[arg-type]


def test_bad_verify_path() -> None:
    with pytest.raises(ValueError, match="CA bundle"):
        OADAClient("https://host", TOKEN, verify="/nonexistent/ca.pem")


def test_repr_never_shows_the_token() -> None:
    oada = OADAClient("http://127.0.0.1:1", TOKEN)
    assert TOKEN not in repr(oada)
    assert TOKEN not in repr(oada.clone())
    assert "127.0.0.1:1" in repr(oada)


async def test_unopened_and_closed_clients_refuse_requests() -> None:
    oada = OADAClient("http://oada.test", TOKEN)
    with pytest.raises(ClientClosed, match="not open"):
        await oada.get("/bookmarks")
    async with mock_client(lambda request: json_response(200, {})) as client:
        assert client.state is ClientState.OPEN
    assert client.state is ClientState.CLOSED
    with pytest.raises(ClientClosed, match="closed"):
        await client.get("/bookmarks")
    with pytest.raises(RuntimeError, match="opened once"):
        await client.__aenter__()


async def test_bad_paths_and_data_raise_before_sending() -> None:
    sent: list[str] = []

    def handler(request: object) -> object:
        sent.append(str(request))
        return json_response(200, {})

    async with mock_client(handler) as oada:  # type: ignore[arg-type]
        for path in ["", "/", "/a?b=1", "/a#x", "/a b", "/a\nb"]:
            with pytest.raises(ValueError, match="expected"):
                await oada.get(path)
        with pytest.raises(ValueError, match="JSON-serialisable"):
            await oada.put("/bookmarks/x", {"when": object()})
        with pytest.raises(ValueError, match="JSON-serialisable"):
            await oada.put("/bookmarks/x", {"n": float("nan")})
        with pytest.raises(ValueError, match="string header"):
            await oada.get("/bookmarks", headers={"x-n": 5})  # type: ignore[dict-item]
        with pytest.raises(ValueError, match="type 'single' or 'tree'"):
            oada.watch("/bookmarks", type="forest")  # type: ignore[call-overload]
        with pytest.raises(ValueError, match="rev as an integer"):
            oada.watch("/bookmarks", rev=-1)
        with pytest.raises(ValueError, match="initial_method"):
            oada.watch("/bookmarks", initial_method="put")  # type: ignore[call-overload]
    assert sent == []


async def test_json_bodies_are_exact_both_ways() -> None:
    import enum
    import json

    import httpx

    class Colour(enum.StrEnum):
        RED = "red"

    stored = (
        b'{"big": 123456789012345678901234567890, "low": -9223372036854775809,'
        b' "t": "\xc3\xa9", "n": null}'
    )
    bodies: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "PUT":
            bodies.append(request.content)
            return httpx.Response(201)
        return httpx.Response(200, headers={"content-type": "application/json"}, content=stored)

    async with mock_client(handler) as oada:
        data = {
            "big": 2**70,
            "low": -(2**63) - 1,
            "colour": Colour.RED,
            "none": None,
            "t": "\u00e9\u20ac",
            "f": 0.1,
        }
        await oada.put("/bookmarks/x", data)
        await oada.put("/bookmarks/x", {"plain": [1, "a", True, 1.5]})
        got = (await oada.get("/bookmarks/x")).data
    assert json.loads(bodies[0]) == {**data, "colour": "red"}
    assert json.loads(bodies[1]) == {"plain": [1, "a", True, 1.5]}
    assert got == {
        "big": 123456789012345678901234567890,
        "low": -9223372036854775809,
        "t": "\u00e9",
        "n": None,
    }


async def test_data_the_stdlib_refuses_is_still_refused() -> None:
    import dataclasses
    import datetime

    @dataclasses.dataclass
    class Point:
        x: int

    def handler(request: object) -> object:
        return json_response(201)

    async with mock_client(handler) as oada:  # type: ignore[arg-type]
        for bad in (
            {"p": Point(1)},
            {"when": datetime.datetime(2026, 1, 1)},
            {"inf": float("inf")},
            {"nested": [{"n": float("-inf")}]},
            {"none": None, "deep": ({"x": [0.5, float("nan")]},)},
            {1: "non-string key is fine for the stdlib", "s": {1, 2}},
        ):
            with pytest.raises(ValueError, match="JSON-serialisable"):
                await oada.put("/bookmarks/x", bad)


async def test_requests_carry_the_package_version_as_user_agent() -> None:
    agents: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        agents.append(request.headers["user-agent"])
        return json_response(200, {})

    async with mock_client(handler) as oada:
        await oada.get("/bookmarks")
    assert agents == [f"oada-jobs/{__version__}"]


def _ca_subjects(context: ssl.SSLContext) -> set[str]:
    return {
        value
        for cert in context.get_ca_certs()
        for rdn in cert["subject"]
        for key, value in rdn
        if key == "commonName"
    }


def test_default_trust_is_ssl_cert_file_else_certifis_bundle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = self_signed(tmp_path).ca_cert
    dev_ca = _ca_subjects(ssl.create_default_context(cafile=str(ca)))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    assert _ca_subjects(make_ssl_context(True)) == dev_ca
    monkeypatch.delenv("SSL_CERT_FILE")
    bundled = make_ssl_context(True)
    assert bundled.verify_mode is ssl.CERT_REQUIRED
    assert bundled.check_hostname
    assert bundled.cert_store_stats()["x509_ca"] == len(
        ssl.create_default_context(cafile=certifi.where()).get_ca_certs()
    )
    assert not dev_ca & _ca_subjects(bundled)


def test_the_package_imports_without_httpx() -> None:
    # httpx waits for the first request over HTTP (and its CLI libraries
    # with it): a service on the WebSocket starts without them.
    code = "import sys, oada_jobs; print(sorted(m for m in ('httpx', 'rich', 'click') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
