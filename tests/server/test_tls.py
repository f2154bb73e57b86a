"""TLS: the development certificate, HTTPS and WSS round trips, and the ALPN probe."""

from __future__ import annotations

import json
import ssl
from pathlib import Path

import anyio
import httpx
import pytest
from cryptography import x509
from websockets.asyncio.client import connect

from oada_jobs.server.tls import self_signed
from oada_jobs.testing import EmbeddedServer, embedded_server


def test_certificate_names_and_key_permissions(tmp_path: Path) -> None:
    cert = self_signed(tmp_path)
    leaf = x509.load_pem_x509_certificates(cert.cert.read_bytes())[0]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} >= {"127.0.0.1", "::1"}
    assert cert.key.stat().st_mode & 0o077 == 0
    # The CA verifies the leaf in a strict client context.
    ctx = ssl.create_default_context(cafile=str(cert.ca_cert))
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    assert ctx.get_ca_certs()


async def test_https_and_wss_round_trip() -> None:
    async with embedded_server(tls=True) as server:
        assert server.url.startswith("https://")
        assert server.ca_cert is not None
        ctx = server.ssl_context()
        ctx.verify_flags |= ssl.VERIFY_X509_STRICT
        headers = {"authorization": f"Bearer {server.token}"}
        async with httpx.AsyncClient(base_url=server.url, verify=ctx, headers=headers) as c:
            assert (await c.put("/bookmarks/t", json={"tls": True})).status_code == 201
            assert (await c.get("/bookmarks/t")).json() == {"tls": True}
            # localhost is in the certificate too.
            local = server.url.replace("127.0.0.1", "localhost")
            assert (await c.get(f"{local}/bookmarks/t")).status_code == 200

        assert server.ws_url.startswith("wss://")
        async with connect(server.ws_url, ssl=ctx) as ws:
            await ws.send(
                json.dumps(
                    {"requestId": "1", "method": "get", "path": "/bookmarks/t", "headers": headers}
                )
            )
            with anyio.fail_after(5):
                msg = json.loads(await ws.recv())
            assert msg["status"] == 200
            assert msg["data"] == {"tls": True}


async def test_untrusted_clients_are_refused() -> None:
    async with embedded_server(tls=True) as server, httpx.AsyncClient(verify=True) as c:
        with pytest.raises(httpx.ConnectError):
            await c.get(f"{server.url}/bookmarks")


async def test_tls_client_hello_on_plain_port_is_closed(server: EmbeddedServer) -> None:
    """The official client's ALPN probe: a TLS handshake on http:// fails fast, then HTTP works."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with anyio.fail_after(5), pytest.raises((ssl.SSLError, OSError, anyio.BrokenResourceError)):
        await anyio.connect_tcp(
            "127.0.0.1", server.port, ssl_context=ctx, tls_standard_compatible=False
        )
    async with httpx.AsyncClient() as c:
        r = await c.head(f"{server.url}/bookmarks", headers={"authorization": "Bearer god"})
        assert r.status_code == 200
