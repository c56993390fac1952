"""OAuth for multi-seller apps (FACTS-2 B): authorization codes, grants, access and refresh tokens.

A **grant** is what one code exchange creates: the seller's authorization of the application with its scopes and
refresh token. Codes last 5 minutes and work once. Access tokens last 30 days (24 h when ``short_lived``).
Code flow: one refresh token per grant, reusable, never expiring (knob ``refresh_token_grace_days``), and a refresh
returns it again. PKCE: every refresh token is single-use and lasts 90 days, and each refresh returns a new one.

Pure state, no aiohttp: times come from ``clock.now()``, failures are ``SquareError``s.
"""

from __future__ import annotations

import base64
import hashlib
import random
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from . import clock, errors
from .config import Knobs

CODE_TTL = 5 * 60
ACCESS_TTL, SHORT_ACCESS_TTL = 30 * 86400, 86400
PKCE_REFRESH_TTL = 90 * 86400
# FACTS-2 B.5: what the authorize URL grants when it has no `scope` (no CUSTOMERS_READ).
DEFAULT_SCOPES = ("MERCHANT_PROFILE_READ", "PAYMENTS_READ", "SETTLEMENTS_READ", "BANK_ACCOUNTS_READ")
# What RetrieveTokenStatus reports for a personal access token (and the emulator's static seller tokens).
FULL_SCOPES = ("BANK_ACCOUNTS_READ", "CUSTOMERS_READ", "CUSTOMERS_WRITE", "MERCHANT_PROFILE_READ",
               "MERCHANT_PROFILE_WRITE", "PAYMENTS_READ", "PAYMENTS_WRITE", "SETTLEMENTS_READ")
_TOKEN_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"  # noqa: S105
_READ_PREFIXES = ("List", "Retrieve", "Search", "BulkRetrieve")


def required_scope(operation: str) -> str | None:
    """The permission a /v2 operation needs from an OAuth token (FACTS-2 B.5): Merchants API MERCHANT_PROFILE_READ,
    customer reads (SearchCustomers included) CUSTOMERS_READ, customer writes CUSTOMERS_WRITE."""
    if "Merchant" in operation:
        return "MERCHANT_PROFILE_READ"
    if "Customer" not in operation:
        return None
    return "CUSTOMERS_READ" if operation.startswith(_READ_PREFIXES) else "CUSTOMERS_WRITE"


def challenge_matches(challenge: str, method: str | None, verifier: str) -> bool:
    """PKCE (UNCONFIRMED #13): S256 or plain; without a stated method either one matches."""
    s256 = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    if method == "S256":
        return s256 == challenge
    if method == "plain":
        return verifier == challenge
    return challenge in (s256, verifier)


@dataclass
class AuthCode:
    code: str
    merchant_id: str
    scopes: list[str]
    created_at: float
    redirect_uri: str | None = None  # given on the authorize URL: ObtainToken must repeat it
    code_challenge: str | None = None
    challenge_method: str | None = None
    used: bool = False


@dataclass
class Grant:
    """One authorization of the application by a seller (one code exchange)."""

    id: str
    merchant_id: str
    scopes: list[str]
    pkce: bool
    refresh_token: str  # code flow: the one reusable token; PKCE: the current unspent one
    refresh_expires_at: float | None = None  # PKCE only
    spent: list[str] = field(default_factory=list)  # PKCE refresh tokens already used
    last_access_expires_at: float = 0.0
    revoked: bool = False
    refresh_invalid: bool = False  # fault switch: every refresh fails for good


@dataclass
class AccessToken:
    token: str
    merchant_id: str
    grant_id: str
    scopes: list[str]
    expires_at: float
    short_lived: bool = False
    revoked: bool = False

    def live(self, now: float) -> bool:
        return not self.revoked and now < self.expires_at


@dataclass
class Issued:
    """What ObtainToken answers."""

    grant: Grant
    access: AccessToken
    refresh_token: str

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"access_token": self.access.token, "token_type": "bearer",
                               "expires_at": clock.rfc3339_s(self.access.expires_at),
                               "merchant_id": self.access.merchant_id, "refresh_token": self.refresh_token,
                               "short_lived": self.access.short_lived}
        if self.grant.pkce and self.grant.refresh_expires_at is not None:
            out["refresh_token_expires_at"] = clock.rfc3339_s(self.grant.refresh_expires_at)
        return out


class OAuthStore:
    """Every code, grant and OAuth access token the application has issued."""

    def __init__(self, seed: int, knobs: Knobs) -> None:
        self.knobs = knobs
        self.rng = random.Random(f"oauth:{seed}")
        self.codes: dict[str, AuthCode] = {}
        self.grants: dict[str, Grant] = {}
        self.access: dict[str, AccessToken] = {}
        self.refresh: dict[str, str] = {}  # refresh token (current or spent) -> grant id

    def _random(self, prefix: str, length: int) -> str:
        return prefix + "".join(self.rng.choices(_TOKEN_ALPHABET, k=length))

    def _fail(self, detail: str) -> errors.SquareError:
        return errors.invalid_grant(detail, self.knobs.invalid_grant_status, self.knobs.invalid_grant_code)

    # --- authorize and ObtainToken ---

    def new_code(self, merchant_id: str, scopes: list[str], redirect_uri: str | None, challenge: str | None,
                 method: str | None) -> str:
        code = self._random("sq0cgb-", 22)
        self.codes[code] = AuthCode(code, merchant_id, scopes, clock.now(), redirect_uri, challenge, method)
        return code

    def redeem_code(self, code: str, *, redirect_uri: str | None, verifier: str | None, has_secret: bool,
                    short_lived: bool) -> Issued:
        """grant_type=authorization_code. The code flow needs the client secret, PKCE the matching verifier."""
        rec = self.codes.get(code)
        if rec is None or rec.used:
            raise self._fail("The authorization code is invalid or has already been used.")
        if clock.now() >= rec.created_at + CODE_TTL:
            raise self._fail("The authorization code has expired.")
        if rec.redirect_uri is not None and redirect_uri != rec.redirect_uri:
            raise self._fail("The redirect_uri does not match the one of the authorization request.")
        if rec.code_challenge is not None:
            if not verifier or not challenge_matches(rec.code_challenge, rec.challenge_method, verifier):
                raise self._fail("The code_verifier does not match the code_challenge.")
        elif not has_secret:
            raise errors.missing_parameter("client_secret")
        rec.used = True
        pkce = rec.code_challenge is not None
        grant = Grant(self._random("grant-", 16), rec.merchant_id, list(rec.scopes), pkce, self._new_refresh(pkce))
        if pkce:
            grant.refresh_expires_at = clock.now() + PKCE_REFRESH_TTL
        self.grants[grant.id] = grant
        self.refresh[grant.refresh_token] = grant.id
        return Issued(grant, self._issue(grant, grant.scopes, short_lived), grant.refresh_token)

    def _new_refresh(self, pkce: bool) -> str:
        return self._random("EQAAp" if pkce else "EQAA", 60)

    def _issue(self, grant: Grant, scopes: list[str], short_lived: bool) -> AccessToken:
        ttl = SHORT_ACCESS_TTL if short_lived else ACCESS_TTL
        token = AccessToken(self._random("EAAA", 60), grant.merchant_id, grant.id, scopes, clock.now() + ttl,
                            short_lived)
        self.access[token.token] = token
        grant.last_access_expires_at = token.expires_at
        return token

    def refresh_grant(self, refresh_token: str, *, has_secret: bool, scopes: list[str] | None,
                      short_lived: bool) -> Issued:
        """grant_type=refresh_token: a new access token (scopes narrowed to the intersection if given)."""
        grant = self.grants.get(self.refresh.get(refresh_token, ""))
        if grant is None:
            raise self._fail("The refresh token is invalid.")
        self._check_refresh(grant, refresh_token, has_secret)
        if not self.knobs.refresh_keeps_old_access_token:
            for token in self.access.values():
                if token.grant_id == grant.id:
                    token.revoked = True
        if grant.pkce:
            grant.spent.append(refresh_token)
            grant.refresh_token = self._new_refresh(True)
            grant.refresh_expires_at = clock.now() + PKCE_REFRESH_TTL
            self.refresh[grant.refresh_token] = grant.id
        granted = [s for s in grant.scopes if scopes is None or s in scopes]
        return Issued(grant, self._issue(grant, granted, short_lived), grant.refresh_token)

    def _check_refresh(self, grant: Grant, refresh_token: str, has_secret: bool) -> None:
        now = clock.now()
        if grant.revoked:
            raise self._fail("The authorization has been revoked.")
        if grant.refresh_invalid:
            raise self._fail("The refresh token is no longer valid.")
        if not grant.pkce and not has_secret:
            raise errors.missing_parameter("client_secret")
        if grant.pkce and refresh_token in grant.spent:
            raise self._fail("The refresh token has already been used.")
        if grant.pkce and grant.refresh_expires_at is not None and now >= grant.refresh_expires_at:
            raise self._fail("The refresh token has expired.")
        grace = self.knobs.refresh_token_grace_days
        if not grant.pkce and grace > 0 and now >= grant.last_access_expires_at + grace * 86400:
            raise self._fail("The refresh token has expired.")

    # --- revocation, faults, queries ---

    def revoke_merchant(self, merchant_id: str) -> tuple[int, bool]:
        """Revoke every grant and access token of a seller: (live access tokens revoked, whether any grant was
        live)."""
        now = clock.now()
        had_grant = False
        for grant in self.grants.values():
            if grant.merchant_id == merchant_id and not grant.revoked:
                grant.revoked = had_grant = True
        count = 0
        for token in self.access.values():
            if token.merchant_id == merchant_id and not token.revoked:
                count += token.live(now)
                token.revoked = True
        return count, had_grant

    def expire_now(self, merchant_id: str | None) -> int:
        """Fault switch: the current access tokens (of one seller, or all) expire now."""
        now = clock.now()
        hit = [t for t in self.access.values() if t.live(now) and merchant_id in (None, t.merchant_id)]
        for token in hit:
            token.expires_at = now
        return len(hit)

    def invalidate_refresh(self, merchant_id: str) -> int:
        """Fault switch: the seller's refresh tokens stop working for good (the access tokens keep working)."""
        hit = [g for g in self.grants.values() if g.merchant_id == merchant_id and not g.revoked]
        for grant in hit:
            grant.refresh_invalid = True
        return len(hit)

    def live_grants(self, merchant_id: str) -> Iterable[Grant]:
        return (g for g in self.grants.values() if g.merchant_id == merchant_id and not g.revoked)

    def has_scope(self, merchant_id: str, scope: str) -> bool:
        return any(scope in g.scopes for g in self.live_grants(merchant_id))

    def known(self, merchant_id: str) -> bool:
        return any(g.merchant_id == merchant_id for g in self.grants.values())

    # --- admin dump, snapshot ---

    def dump(self, merchant_id: str | None = None) -> dict[str, Any]:
        now = clock.now()

        def wanted(mid: str) -> bool:
            return merchant_id is None or mid == merchant_id

        return {
            "grants": [asdict(g) | {"access_tokens": [
                {"token": t.token, "expires_at": clock.rfc3339_s(t.expires_at), "scopes": t.scopes,
                 "short_lived": t.short_lived, "revoked": t.revoked, "live": t.live(now)}
                for t in self.access.values() if t.grant_id == g.id]}
                for g in self.grants.values() if wanted(g.merchant_id)],
            "codes": [asdict(c) | {"expired": now >= c.created_at + CODE_TTL}
                      for c in self.codes.values() if wanted(c.merchant_id)],
        }

    def to_json(self) -> dict[str, Any]:
        return {"codes": [asdict(c) for c in self.codes.values()], "grants": [asdict(g) for g in self.grants.values()],
                "access": [asdict(t) for t in self.access.values()]}

    def restore(self, snap: dict[str, Any]) -> None:
        self.codes = {c["code"]: AuthCode(**c) for c in snap.get("codes", [])}
        self.grants = {g["id"]: Grant(**g) for g in snap.get("grants", [])}
        self.access = {t["token"]: AccessToken(**t) for t in snap.get("access", [])}
        self.refresh = {tok: g.id for g in self.grants.values() for tok in (g.refresh_token, *g.spent)}
