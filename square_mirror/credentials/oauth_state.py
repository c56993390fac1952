"""The OAuth redirect's ``state``: what ties Square's redirect to an authorize URL this deployment handed out (CSRF).

A state is ``{nonce}.{expires}.{mac}``: a random nonce, its expiry (Unix seconds) and an HMAC-SHA256 of both under a
key derived from the first encryption key. The receiver checks it in constant time without any database (it talks
to Redis only); the worker then accepts each state once (``square_private.oauth_states``), so a replayed redirect
connects nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Sequence
from typing import Final

from square_mirror.settings import Secret

LIFETIME_SECONDS: Final = 3600  # an authorize URL works for an hour
_LABEL: Final = b"square-mirror oauth state"


def _key(secret: Secret) -> bytes:
    return hmac.new(secret.reveal().encode("ascii"), _LABEL, hashlib.sha256).digest()


def _mac(key: bytes, body: str) -> str:
    digest = hmac.new(key, body.encode("ascii"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


def new_state(keys: Sequence[Secret], *, lifetime: int = LIFETIME_SECONDS, now: float | None = None) -> str:
    """A fresh state, signed with the first key."""
    body = f"{secrets.token_urlsafe(18)}.{int((now if now is not None else time.time()) + lifetime)}"
    return f"{body}.{_mac(_key(keys[0]), body)}"


def state_hash(state: str) -> str:
    """What identifies a state without revealing it (its MAC never leaves the receiver and the worker): the
    single-use record's key and the connect job's ID."""
    return hashlib.sha256(state.encode("utf-8")).hexdigest()


def state_expiry(state: str) -> int:
    """When a state (already checked by :func:`check_state`) expires, in Unix seconds."""
    return int(state.split(".")[1])


def check_state(keys: Sequence[Secret], state: str | None, *, now: float | None = None) -> bool:
    """Signed by any configured key (rotation) and not expired. Compared in constant time."""
    if not state or len(state) > 200 or state.count(".") != 2:
        return False
    nonce, expires, mac = state.split(".")
    body = f"{nonce}.{expires}"
    valid = False
    for key in keys:
        valid |= hmac.compare_digest(_mac(_key(key), body), mac)
    if not valid or not expires.isdigit():
        return False
    return int(expires) > (now if now is not None else time.time())
