"""Tokens at rest and the OAuth state: encryption with key rotation, signed expiring states, nothing in a repr."""

from __future__ import annotations

import pytest

from square_mirror.credentials.cipher import CipherUnavailable, TokenCipher, new_key
from square_mirror.credentials.oauth_state import check_state, new_state
from square_mirror.credentials.store import Grant
from square_mirror.settings import Secret


def test_a_token_is_encrypted_and_opens_only_with_a_configured_key() -> None:
    key = Secret(new_key())
    cipher = TokenCipher([key])
    sealed = cipher.encrypt("EAAA-access-token")
    assert "EAAA" not in sealed and cipher.decrypt(sealed) == "EAAA-access-token"
    with pytest.raises(CipherUnavailable):
        TokenCipher([Secret(new_key())]).decrypt(sealed)
    assert "EAAA" not in repr(cipher) and key.reveal() not in repr(cipher)


def test_rotation_reencrypts_with_the_new_first_key_and_the_old_key_can_then_go() -> None:
    old, new = Secret(new_key()), Secret(new_key())
    sealed = TokenCipher([old]).encrypt("refresh-token")
    rotated = TokenCipher([new, old]).rotate(sealed)
    assert TokenCipher([new]).decrypt(rotated) == "refresh-token"


def test_without_a_key_no_token_can_be_stored() -> None:
    with pytest.raises(CipherUnavailable, match="SQUARE_MIRROR_ENCRYPTION_KEYS"):
        TokenCipher([])


def test_a_state_is_accepted_when_signed_by_a_configured_key_and_unexpired() -> None:
    key, other = Secret(new_key()), Secret(new_key())
    state = new_state([key], now=1000.0, lifetime=60)
    assert check_state([key], state, now=1030.0)
    assert check_state([other, key], state, now=1030.0)  # after a key rotation
    assert not check_state([key], state, now=1061.0)  # expired
    assert not check_state([other], state, now=1030.0)  # another deployment's
    nonce, expires, mac = state.split(".")
    assert not check_state([key], f"{nonce}.{int(expires) + 999}.{mac}", now=1030.0)  # tampered expiry
    for bad in (None, "", "a.b", "x" * 300, "a.b.c"):
        assert not check_state([key], bad, now=1030.0)


def test_a_grant_never_shows_its_tokens() -> None:
    grant = Grant.from_response({"access_token": "EAAA-secret-access", "refresh_token": "EQAA-secret-refresh",
                                 "merchant_id": "M1", "expires_at": "2026-01-31T00:00:00Z",
                                 "refresh_token_expires_at": "2026-04-01T00:00:00Z", "token_type": "bearer"})
    assert grant.refresh_kind == "pkce"
    shown = repr(grant) + str(grant)
    assert "EAAA" not in shown and "EQAA" not in shown and "M1" in shown
    code = Grant.from_response({"access_token": "A", "refresh_token": "R", "merchant_id": "M2"})
    assert code.refresh_kind == "code"
