"""Small pieces shared by the client modules: base URLs, TLS, JSON, ids.

Owns these small shared pieces; imports no other module of the client and
must not import the framework or the server.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import math
import os
import re
import ssl
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import certifi
import orjson

__all__ = [
    "JSON_TYPES",
    "BaseURL",
    "ClosesOnExit",
    "dumps",
    "is_json_type",
    "loads",
    "make_ssl_context",
    "new_request_id",
    "parse_domain",
]

#: Hosts that get plain ``http://`` when the domain has no scheme.
_LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})

JSON_TYPES = ("application/json", "text/json")


class BaseURL:
    """The validated origin of an OADA server: scheme, host and port."""

    __slots__ = ("host", "http", "port", "scheme", "ws")

    def __init__(self, scheme: str, host: str, port: int | None) -> None:
        self.scheme = scheme
        self.host = host
        self.port = port
        netloc = f"[{host}]" if ":" in host else host
        if port is not None:
            netloc = f"{netloc}:{port}"
        #: ``http(s)://host[:port]`` with no trailing slash.
        self.http = f"{scheme}://{netloc}"
        #: the WebSocket endpoint, always at ``/``.
        self.ws = f"{'wss' if scheme == 'https' else 'ws'}://{netloc}/"

    @property
    def secure(self) -> bool:
        return self.scheme == "https"

    def __repr__(self) -> str:
        return f"BaseURL({self.http!r})"


def parse_domain(domain: str) -> BaseURL:
    """Validate *domain* and return its :class:`BaseURL`.

    Accepted forms: ``https://host[:port]``, ``http://host[:port]`` and
    ``host[:port]``. Without a scheme the client uses ``https``, except for
    ``localhost``, ``127.0.0.1`` and ``::1``, which get ``http`` (a local
    development server rarely has a certificate).

    Raises :class:`ValueError` for anything else.
    """
    if not isinstance(domain, str):
        raise ValueError(f"expected the domain as a string, got {type(domain).__name__}")
    text = domain.strip()
    if not text:
        raise ValueError("expected a domain like 'https://oada.example.org', got an empty string")
    if "://" not in text:
        host_part = text.split("/", 1)[0]
        host = urlsplit(f"//{host_part}").hostname or ""
        scheme = "http" if host in _LOCAL_HOSTS else "https"
        text = f"{scheme}://{text}"
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as error:
        raise ValueError(
            f"expected a domain like 'https://host:port', got {domain!r}: {error}"
        ) from None
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"expected an http:// or https:// domain, got scheme {parts.scheme!r}")
    if not parts.hostname:
        raise ValueError(f"expected a host name in the domain, got {domain!r}")
    if not _valid_host(parts.hostname):
        raise ValueError(
            f"expected a host name (letters, digits, '-', '.') or an IP address, got {domain!r}"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(
            f"expected a bare origin (OADA lives at the server root), got a path in {domain!r}"
        )
    if parts.username or parts.password:
        raise ValueError("expected a domain without credentials; pass the token separately")
    return BaseURL(parts.scheme, parts.hostname, port)


_HOST = re.compile(
    r"^[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?(\.[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?)*\.?$"
)


def _valid_host(host: str) -> bool:
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return False
        return True
    return len(host) <= 253 and _HOST.match(host) is not None


def make_ssl_context(verify: bool | str | os.PathLike[str] | ssl.SSLContext) -> ssl.SSLContext:
    """Build the one TLS context used by both the HTTP and the WebSocket side.

    ``True`` trusts the CA bundle named by ``SSL_CERT_FILE`` (or the
    directory ``SSL_CERT_DIR``), else certifi's bundle, as httpx does;
    ``False`` disables verification (development only), a path names a CA
    bundle (e.g. the embedded server's development certificate) and an
    :class:`ssl.SSLContext` is used as is.
    """
    if isinstance(verify, ssl.SSLContext):
        return verify
    if verify is True:
        if os.environ.get("SSL_CERT_FILE"):
            return ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
        if os.environ.get("SSL_CERT_DIR"):
            return ssl.create_default_context(capath=os.environ["SSL_CERT_DIR"])
        return ssl.create_default_context(cafile=certifi.where())
    if verify is False:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if isinstance(verify, str | os.PathLike):
        path = Path(verify)
        if not path.is_file():
            raise ValueError(f"expected verify to name a CA bundle file, got {str(path)!r}")
        return ssl.create_default_context(cafile=str(path))
    raise ValueError(f"expected verify as bool, a CA file path or an SSLContext, got {verify!r}")


def is_json_type(content_type: str | None) -> bool:
    """Whether *content_type* is JSON: ``application/json``, ``text/json`` or ``*/*+json``."""
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media in JSON_TYPES or media.endswith("+json")


_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
# Dataclasses, datetimes and subclasses of str/int/dict/list make orjson
# raise, so they reach the stdlib encoder, which accepts or refuses them (and
# writes str/int enum members) as it always has.
_ORJSON_OPTIONS = (
    orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_SUBCLASS
)
# orjson turns integers beyond 64 bits into floats: texts with a run of 19
# digits take the stdlib decoder. Found by mapping digits to "0" and the rest
# to " " and searching (a regular expression cost four times orjson's time).
_DIGIT_MAP = bytes(48 if 48 <= i <= 57 else 32 for i in range(256))
_DIGIT_RUN = b"0" * 19


def dumps(value: Any) -> str:
    """Compact JSON text (NaN and Infinity refused: they are not JSON).

    orjson does the work (every request is encoded; it is ten times faster
    than the stdlib encoder). It writes NaN and infinities as ``null``, so a
    text with a ``null`` is made again by the stdlib encoder, which refuses
    them, if the value holds such a float; so are values orjson cannot take
    (integers past 64 bits, other objects). The one difference from the
    stdlib: UUIDs and plain (non-str, non-int) enum members are written as
    their string and value instead of being refused.
    """
    try:
        text = orjson.dumps(value, option=_ORJSON_OPTIONS)
    except TypeError:
        return _encoder.encode(value)
    if b"null" in text and _has_non_finite(value):
        return _encoder.encode(value)
    return text.decode()


def _has_non_finite(value: Any) -> bool:
    """Whether *value* holds a NaN or an infinity (in any list, tuple or dict)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return False


def loads(text: str | bytes) -> Any:
    """``json.loads(text)``: through orjson when that gives the same value.

    Anything orjson refuses (NaN, lone surrogates...) gets the stdlib's
    answer, value or exception, as does a text with integers past 64 bits.
    """
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    if _DIGIT_RUN not in data.translate(_DIGIT_MAP):
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass
    return json.loads(text)


_prefix = os.urandom(4).hex()
_counter = itertools.count(1)


def new_request_id() -> str:
    """A request id unique within this process (cheap: a random prefix and a counter)."""
    return f"{_prefix}-{next(_counter)}"


class ClosesOnExit:
    """Mixin for objects whose ``async with`` block ends by awaiting ``aclose()``."""

    async def aclose(self) -> None:
        raise NotImplementedError

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
