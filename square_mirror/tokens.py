"""Access tokens per merchant: one token for a single seller, a JSON file for apps serving many, or OAuth sellers'
tokens from Postgres (``square_mirror.credentials``, loaded by the process and refreshed there).

The file is re-read when it changes (checked at most once a second), so replacing a revoked token needs no
restart. A file that turns malformed while running keeps the last good tokens and logs the problem. A merchant in
the file uses the file's token; else its OAuth token; else ``SQUARE_ACCESS_TOKEN``, except for an OAuth seller whose
access was revoked or removed (:meth:`TokenSource.withdrawn`): no token at all then, not even the application's for
the Events API, so every call for it fails as unauthorized.
"""

from __future__ import annotations

import time
from pathlib import Path

from square_mirror.logs import get_logger
from square_mirror.settings import Secret, Settings, SettingsError, load_tokens_file

log = get_logger(__name__)


class NoToken(LookupError):
    """No access token is configured for this merchant."""


class TokenSource:
    def __init__(self, *, single: Secret | None = None, path: Path | None = None, single_merchant: str | None = None,
                 application: Secret | None = None):
        self._single = single
        self._application = application
        self._single_merchant = single_merchant
        self._path = path
        self._tokens: dict[str, Secret] = {}
        self._oauth: dict[str, Secret] = {}
        self._withdrawn: frozenset[str] = frozenset()
        self._mtime: float | None = None
        self._checked = 0.0
        if path is not None:
            self._reload(force=True)

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenSource:
        return cls(
            single=settings.square_access_token,
            path=settings.square_tokens_file,
            single_merchant=settings.square_merchant_id,
            application=settings.square_application_access_token,
        )

    def _reload(self, *, force: bool = False) -> None:
        if self._path is None:
            return
        now = time.monotonic()
        if not force and now - self._checked < 1.0:
            return
        self._checked = now
        try:
            mtime = self._path.stat().st_mtime
        except OSError:
            if force:
                raise SettingsError(f"SQUARE_TOKENS_FILE {str(self._path)!r} does not exist") from None
            return
        if not force and mtime == self._mtime:
            return
        try:
            tokens = load_tokens_file(self._path)
        except SettingsError as exc:
            if force:
                raise
            log.error("tokens_file_invalid_keeping_previous", error=str(exc))
            self._mtime = mtime
            return
        self._tokens, self._mtime = tokens, mtime
        log.info("tokens_file_loaded", merchants=len(tokens))

    def token_for(self, merchant_id: str) -> str:
        self._reload()
        token = self._tokens.get(merchant_id) or self._oauth.get(merchant_id)
        if token is not None:
            return token.reveal()
        if merchant_id in self._withdrawn:
            raise NoToken(f"merchant {merchant_id} revoked the application's access (or was removed)")
        if self._single is not None:
            return self._single.reveal()
        raise NoToken(f"no access token configured for merchant {merchant_id}")

    def events_token_for(self, merchant_id: str) -> str:
        """The token for the Events API, which takes personal access tokens only: the application's own (the
        caller filters by ``merchant_ids``) when configured, else the seller's token, which works only when it is
        that seller's personal access token (a single seller's ``SQUARE_ACCESS_TOKEN``)."""
        if self._application is not None and not self.withdrawn(merchant_id):
            return self._application.reveal()
        return self.token_for(merchant_id)

    def set_oauth(self, tokens: dict[str, Secret], withdrawn: frozenset[str] | set[str] = frozenset()) -> None:
        """The OAuth sellers' current access tokens (every seller not revoked or removed), replacing the last set, and
        the sellers whose access is gone (revoked or removed)."""
        self._oauth = dict(tokens)
        self._withdrawn = frozenset(withdrawn) - set(tokens)

    def withdrawn(self, merchant_id: str) -> bool:
        """An OAuth seller whose access was revoked or removed, and who has no token in the tokens file: nothing may
        be synced for it (a seller with a personal token in the file is not affected by its OAuth grant's fate)."""
        if merchant_id not in self._withdrawn:
            return False
        self._reload()
        return merchant_id not in self._tokens

    def merchants(self) -> list[str]:
        """Merchants named in configuration (the tokens file, or SQUARE_MERCHANT_ID for a single token) and the
        OAuth sellers."""
        self._reload()
        known = set(self._tokens) | set(self._oauth)
        if self._single is not None and self._single_merchant:
            known.add(self._single_merchant)
        return sorted(known)

    @property
    def has_single_token(self) -> bool:
        return self._single is not None
