"""Encryption of tokens at rest: Fernet (AES-128-CBC with HMAC-SHA256) under keys from the environment or a file.

Several keys may be configured: the first encrypts, every one decrypts, so a new key is put first, then
``square-mirror sellers rotate-key`` re-encrypts every stored token with it, then the old key is dropped.
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from square_mirror.settings import Secret


class CipherUnavailable(RuntimeError):
    """No encryption key is configured, or none of the configured keys opens a stored token."""


class TokenCipher:
    def __init__(self, keys: Sequence[Secret]) -> None:
        if not keys:
            raise CipherUnavailable("SQUARE_MIRROR_ENCRYPTION_KEYS is not set: OAuth sellers' tokens cannot be stored")
        self._fernet = MultiFernet([Fernet(k.reveal().encode("ascii")) for k in keys])

    def __repr__(self) -> str:
        return "TokenCipher(**********)"

    def encrypt(self, token: str) -> str:
        return self._fernet.encrypt(token.encode("utf-8")).decode("ascii")

    def decrypt(self, stored: str) -> str:
        try:
            return self._fernet.decrypt(stored.encode("ascii")).decode("utf-8")
        except InvalidToken:
            raise CipherUnavailable("a stored token does not open with any configured encryption key") from None

    def rotate(self, stored: str) -> str:
        """The same token encrypted with the first key (a no-op in effect when it already is)."""
        try:
            return self._fernet.rotate(stored.encode("ascii")).decode("ascii")
        except InvalidToken:
            raise CipherUnavailable("a stored token does not open with any configured encryption key") from None


def new_key() -> str:
    """A fresh Fernet key."""
    return Fernet.generate_key().decode("ascii")
