"""Time-ordered KSUIDs: 27 base62 characters, sortable by creation time.

Layout as in the KSUID spec: a 4-byte big-endian timestamp (seconds since
2014-05-13T16:53:20Z) followed by a 16-byte payload. Within one second the
generator increments the previous payload instead of drawing a new random
one, so keys made by one process always sort in creation order; OADA job
``updates`` rely on that.

Owns KSUID generation only; imports nothing from the package, so the client,
the server and the framework may all use it.
"""

from __future__ import annotations

import itertools
import os
import threading
import time

__all__ = ["ksuid"]

_EPOCH = 1_400_000_000
_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_LENGTH = 27
_PAYLOAD_MAX = (1 << 128) - 1

_lock = threading.Lock()
_last_ts = -1
_last_payload = 0
_last_text = ""
#: Each base62 digit but the last, mapped to the one after it.
_NEXT_DIGIT = dict(itertools.pairwise(_ALPHABET))


def _encode(value: int) -> str:
    chars = []
    while value:
        value, rem = divmod(value, 62)
        chars.append(_ALPHABET[rem])
    return "".join(reversed(chars)).rjust(_LENGTH, "0")


def _increment(text: str) -> str:
    """*text* plus one, in base62 (the caller knows it does not overflow)."""
    i = len(text) - 1
    while text[i] == "z":
        i -= 1
    return text[:i] + _NEXT_DIGIT[text[i]] + "0" * (len(text) - 1 - i)


def ksuid() -> str:
    """Return a new KSUID string that sorts after every one made before it here."""
    global _last_ts, _last_payload, _last_text
    with _lock:
        ts = max(int(time.time()) - _EPOCH, _last_ts)
        if ts == _last_ts and _last_payload < _PAYLOAD_MAX:
            # The previous key plus one: counting up the text costs a
            # fraction of encoding the 160-bit number again.
            _last_payload += 1
            _last_text = _increment(_last_text)
        else:
            ts = ts if ts != _last_ts else ts + 1
            # Keep headroom in the payload so increments within a second
            # do not overflow into the next timestamp.
            _last_ts = ts
            _last_payload = int.from_bytes(os.urandom(16), "big") >> 1
            _last_text = _encode((ts << 128) | _last_payload)
        return _last_text
