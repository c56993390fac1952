"""The ``Emulator``: every seller's state, their tokens and the application token, plus the machinery that
serves them all (webhooks, faults), and saving/restoring all of it as one snapshot.

Nothing here knows about routes: handlers reach the one ``Emulator`` through ``keys.EMULATOR``.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from . import clock, errors
from .config import OAUTH, PERSONAL, REVOKED_EVENT_TYPE, TOKEN_KINDS, EmulatorConfig, Knobs
from .errors import SquareError
from .faults import FaultInjector
from .oauth import AccessToken, OAuthStore, required_scope
from .seeding import seed_merchant
from .state import MerchantState
from .subscriptions import ApiSubscriptions
from .traffic import RequestCounts
from .webhooks import Subscription, WebhookDispatcher

# The Events API: endpoints the application token is good for, and the ones OAuth tokens are refused by.
EVENTS_OPERATIONS = frozenset(("SearchEvents", "ListEventTypes", "EnableEvents", "DisableEvents"))
# The Webhook Subscriptions API: the application token only (FACTS-2 C).
WEBHOOK_OPERATIONS = frozenset((
    "ListWebhookEventTypes", "ListWebhookSubscriptions", "CreateWebhookSubscription", "RetrieveWebhookSubscription",
    "UpdateWebhookSubscription", "DeleteWebhookSubscription", "UpdateWebhookSubscriptionSignatureKey",
    "TestWebhookSubscription"))
APPLICATION_OPERATIONS = EVENTS_OPERATIONS | WEBHOOK_OPERATIONS
REVOKER_TYPES = ("APPLICATION", "MERCHANT", "SQUARE")


def bearer_token(request: web.Request) -> str:
    """The token of ``Authorization: Bearer TOKEN`` (Square's 401s when missing or malformed)."""
    header = request.headers.get("Authorization")
    if not header:
        raise errors.unauthorized_missing()
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise errors.unauthorized_invalid()
    return token


@dataclass(frozen=True)
class Principal:
    """Who a /v2 request authenticated as: one seller (``personal``/``oauth`` token) or the application."""

    kind: str  # "personal" | "oauth" | "application"
    merchant: MerchantState | None = None

    @property
    def application(self) -> bool:
        return self.kind == "application"


class Emulator:
    """Every seller's state plus the cross-cutting machinery (webhooks, faults)."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.seed = config.seed
        self.knobs: Knobs = config.knobs
        self._initial_knobs = config.knobs.to_json()
        self.webhooks = WebhookDispatcher(config.seed, self.knobs)
        self.faults = FaultInjector(config.seed, self.knobs)
        self.requests = RequestCounts()  # every public request per seller (admin /_emulator/requests)
        self.merchants: dict[str, MerchantState] = {}
        self.tokens: dict[str, str] = {}
        self.application_token: str | None = config.application_token
        self.application_id = config.application_id  # the app every seller's token belongs to
        self.app_events_enabled: bool | None = None  # last EnableEvents/DisableEvents with the application token
        self.application_secret = config.application_secret
        self.oauth_redirect_url = config.oauth_redirect_url
        self.oauth = OAuthStore(config.seed, self.knobs)
        self.api_subscriptions = ApiSubscriptions(config.seed, self.knobs, self.webhooks)
        self.webhooks.audience = self.app_receives
        # Static OAuth-kind seller tokens killed by a full revocation -> their seller (401 ACCESS_TOKEN_REVOKED).
        self.revoked_tokens: dict[str, str] = {}
        # Who approves the next authorize requests: (merchant ID or None for the first seller, approve?).
        self.approvals: list[tuple[str | None, bool]] = []
        self._rng = random.Random(f"emulator:{config.seed}")
        self._seq = itertools.count(1)
        self._build()

    def _build(self) -> None:
        self.merchants.clear()
        self.tokens.clear()
        self.application_token = self.config.application_token
        self.application_id = self.config.application_id
        self.application_secret = self.config.application_secret
        self.oauth_redirect_url = self.config.oauth_redirect_url
        self.app_events_enabled = None
        self.oauth = OAuthStore(self.seed, self.knobs)
        self.api_subscriptions = ApiSubscriptions(self.seed, self.knobs, self.webhooks)
        self.revoked_tokens = {}
        self.approvals = []
        self._rng = random.Random(f"emulator:{self.seed}")
        self._seq = itertools.count(1)
        for merchant_id, token in self.config.seller_map().items():
            self.add_seller(merchant_id, token, self.config.token_kind(merchant_id))
        for spec in self.config.subscriptions:
            targets = [spec.merchant_id] if spec.merchant_id else list(self.merchants)
            for mid in targets:
                self.webhooks.subscribe(mid, spec.url, spec.signature_key, spec.notification_url,
                                        spec.event_types)
        cfg = self.config
        if cfg.customers or cfg.groups or cfg.segments or cfg.instant_profiles or cfg.custom_attributes:
            for state in self.merchants.values():
                seed_merchant(state, customers=cfg.customers, groups=cfg.groups, segments=cfg.segments,
                              instant_profiles=cfg.instant_profiles, seed=self.seed,
                              custom_attributes=cfg.custom_attributes)

    def next_seq(self) -> int:
        """Emulator-wide event emission order (merges several sellers' events in SearchEvents)."""
        return next(self._seq)

    def add_seller(self, merchant_id: str, token: str, token_kind: str = PERSONAL) -> MerchantState:
        """Add a seller (or give an existing one a new token of the given kind)."""
        if token_kind not in TOKEN_KINDS:
            raise ValueError(f"token_kind must be one of {', '.join(TOKEN_KINDS)}")
        old = self.merchants.get(merchant_id)
        if old is not None:
            self.tokens.pop(old.token, None)
            old.token = token
            old.token_kind = token_kind
            if token:
                self.tokens[token] = merchant_id
            return old
        rng = random.Random(f"merchant:{self.seed}:{merchant_id}")
        inherit = self.knobs.events_enablement_scope == "application" and self.app_events_enabled is not None
        state = MerchantState(merchant_id, token, rng, self.knobs, self._publish, token_kind=token_kind,
                              events_enabled=self.app_events_enabled if inherit else None,
                              events_enabled_by="application" if inherit else "default", next_seq=self.next_seq,
                              application_id=self.application_id)
        self.merchants[merchant_id] = state
        if token:  # "": a seller onboarded through OAuth, reachable with OAuth access tokens only
            self.tokens[token] = merchant_id
        return state

    def set_application_events(self, enabled: bool) -> None:
        """EnableEvents/DisableEvents with the application token: every current seller from now on; with
        ``events_enablement_scope="application"`` sellers added later start in the same state."""
        self.app_events_enabled = enabled
        for state in self.merchants.values():
            state.set_events_enabled(enabled, "application")

    def _publish(self, merchant_id: str, event: dict[str, Any]) -> None:
        # Without a running loop (sync callers) the event is recorded for SearchEvents but not delivered.
        with contextlib.suppress(RuntimeError):
            self.webhooks.publish(merchant_id, event)

    def reset(self) -> None:
        """Back to the start-up state (configured sellers, subscriptions and seeded customers)."""
        self.webhooks.subscriptions.clear()
        self.webhooks.log.clear()
        self.knobs.merge(self._initial_knobs)
        self.faults.reset(self.seed)
        self.requests.reset()
        self._build()

    def merchant(self, merchant_id: str | None) -> MerchantState:
        if merchant_id is None:
            return next(iter(self.merchants.values()))
        state = self.merchants.get(merchant_id)
        if state is None:
            raise SquareError(404, [{"code": "NOT_FOUND", "detail": f"Unknown merchant `{merchant_id}`.",
                                     "category": "INVALID_REQUEST_ERROR"}])
        return state

    def authenticate(self, request: web.Request, operation: str = "") -> Principal:
        """The caller of a /v2 request. The application token works for the Events and Webhook Subscriptions APIs
        only (elsewhere it is an unknown token); those refuse sellers' OAuth tokens, the Webhook Subscriptions API
        every seller token."""
        token = bearer_token(request)
        if self.application_token is not None and token == self.application_token:
            if operation not in APPLICATION_OPERATIONS:
                raise errors.unauthorized_invalid()
            return Principal("application")
        principal = self._seller_principal(token, operation)
        if operation in WEBHOOK_OPERATIONS:
            raise errors.webhooks_need_application_token()
        return principal

    def _seller_principal(self, token: str, operation: str) -> Principal:
        merchant_id = self.tokens.get(token)
        if merchant_id is not None:
            state = self.merchants[merchant_id]
            if state.revoked:
                raise errors.token_revoked()
            kind = state.token_kind
        else:
            access = self.live_access_token(token)
            state, kind = self.merchants[access.merchant_id], OAUTH
            scope = required_scope(operation)
            if scope is not None and scope not in access.scopes:
                raise errors.insufficient_scopes([scope])
        if operation in EVENTS_OPERATIONS and kind == OAUTH:
            raise errors.events_need_personal_token()
        return Principal(kind, state)

    def live_access_token(self, token: str) -> AccessToken:
        """An OAuth access token the emulator issued, if it still works (else Square's 401)."""
        if token in self.revoked_tokens:
            raise errors.token_revoked()
        access = self.oauth.access.get(token)
        if access is None:
            raise errors.unauthorized_invalid()
        if access.revoked or self.merchants[access.merchant_id].revoked:
            raise errors.token_revoked()
        if not access.live(clock.now()):
            raise errors.token_expired(self.knobs.expired_token_code)
        return access

    # --- OAuth: onboarding, revocation, who gets a seller's webhooks ---

    def onboard(self, merchant_id: str) -> MerchantState:
        """A seller approving the application: created (OAuth tokens only) if it does not exist yet."""
        state = self.merchants.get(merchant_id)
        return state if state is not None else self.add_seller(merchant_id, "", OAUTH)

    def authorized(self, merchant_id: str) -> None:
        """A code exchange: a seller reachable only through OAuth has access again."""
        state = self.merchants[merchant_id]
        if not state.token:
            state.revoked = False

    def revoke_authorization(self, merchant_id: str, revoker_type: str) -> int:
        """Revoke every OAuth token the application holds for a seller (grants, refresh and access tokens, and a
        static ``oauth``-kind token); fire oauth.authorization.revoked once per live access token revoked (at least
        once if anything was live). Returns the number of events. A personal token is not an OAuth grant: untouched.
        """
        state = self.merchant(merchant_id)
        count, had_grant = self.oauth.revoke_merchant(merchant_id)
        if state.token and state.token_kind == OAUTH and not state.revoked:
            self.tokens.pop(state.token, None)
            self.revoked_tokens[state.token] = merchant_id
            state.token = ""
            count += 1
        if not state.token:
            state.revoked = True  # the application has no access to this seller any more
        events = max(count, 1) if (count or had_grant) else 0
        self.fire_revoked(merchant_id, revoker_type, events)
        return events

    def revoke_access_token(self, token: str) -> None:
        """RevokeToken with revoke_only_access_token: only that token dies; the grant stays."""
        access = self.oauth.access.get(token)
        if access is not None:
            access.revoked = True
            return
        if token in self.revoked_tokens:
            return
        merchant_id = self.tokens.get(token)
        if merchant_id is None or self.merchants[merchant_id].token_kind != OAUTH:
            raise errors.not_found("The access token was not issued to this application.")
        self.tokens.pop(token)
        self.revoked_tokens[token] = merchant_id
        self.merchants[merchant_id].token = ""

    def token_owner(self, token: str) -> str:
        """The seller an OAuth access token (issued, static oauth-kind, or already revoked) belongs to."""
        access = self.oauth.access.get(token)
        if access is not None:
            return access.merchant_id
        merchant_id = self.revoked_tokens.get(token) or self.tokens.get(token)
        if merchant_id is None or (token in self.tokens and self.merchants[merchant_id].token_kind != OAUTH):
            raise errors.not_found("The access token was not issued to this application.")
        return merchant_id

    def fire_revoked(self, merchant_id: str, revoker_type: str, count: int) -> None:
        """``count`` oauth.authorization.revoked events (FACTS-2 B.6: one per revoked access token), webhooks only
        (not recorded for SearchEvents)."""
        now = clock.now()
        for _ in range(count):
            event = {"merchant_id": merchant_id, "type": REVOKED_EVENT_TYPE, "event_id": clock.new_uuid(self._rng),
                     "created_at": clock.rfc3339_ns(now),
                     "data": {"type": "revocation", "id": clock.new_uuid(self._rng), "object": {"revocation": {
                         "revoked_at": clock.rfc3339_ns(now), "revoker_type": revoker_type}}}}
            self._publish(merchant_id, event)

    def app_receives(self, merchant_id: str, event_type: str) -> bool:
        """Whether the application's own (API) subscriptions get this seller's event: the seller holds a live static
        token or an OAuth grant with CUSTOMERS_READ (every customer and custom attribute event needs it);
        oauth.authorization.revoked needs no permission."""
        if event_type == REVOKED_EVENT_TYPE:
            return True
        state = self.merchants.get(merchant_id)
        if state is None:
            return False
        if state.token and not state.revoked:
            return True
        return not state.revoked and self.oauth.has_scope(merchant_id, "CUSTOMERS_READ")

    def snapshot(self) -> dict[str, Any]:
        return {"seed": self.seed, "knobs": self.knobs.to_json(),
                "application": {"token": self.application_token, "events_enabled": self.app_events_enabled,
                                "application_id": self.application_id, "secret": self.application_secret,
                                "oauth_redirect_url": self.oauth_redirect_url},
                "subscriptions": [s.snapshot() for s in self.webhooks.subscriptions],
                "oauth": self.oauth.to_json() | {"revoked_tokens": dict(self.revoked_tokens)},
                "merchants": {mid: st.snapshot() for mid, st in self.merchants.items()}}

    def restore(self, snap: dict[str, Any]) -> None:
        self.knobs.merge(snap.get("knobs", {}))
        self.merchants.clear()
        self.tokens.clear()
        application = snap.get("application")
        if application is not None:
            self.application_token = application.get("token")
            self.app_events_enabled = application.get("events_enabled")
            self.application_id = str(application.get("application_id") or self.application_id)
            self.application_secret = str(application.get("secret") or self.application_secret)
            self.oauth_redirect_url = application.get("oauth_redirect_url", self.oauth_redirect_url)
        self.oauth.restore(snap.get("oauth", {}))
        self.revoked_tokens = dict(snap.get("oauth", {}).get("revoked_tokens", {}))
        max_seq = max((int(e[3]) for m in snap.get("merchants", {}).values() for e in m.get("events", ())
                       if len(e) > 3), default=0)
        self._seq = itertools.count(max_seq + 1)
        for mid, msnap in snap.get("merchants", {}).items():
            state = self.add_seller(mid, msnap["token"], str(msnap.get("token_kind", PERSONAL)))
            state.restore(msnap)
        self.webhooks.subscriptions.clear()
        for sub in snap.get("subscriptions", []):
            if sub.get("api"):
                self.webhooks.subscriptions.append(Subscription(**sub | {"event_types": tuple(sub["event_types"])}))
                continue
            self.webhooks.subscribe(sub["merchant_id"], sub["url"], sub["signature_key"],
                                    sub.get("notification_url"), tuple(sub.get("event_types") or ()) or None)


def save_snapshot(emulator: Emulator, path: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as fh:
        fh.write(orjson.dumps(emulator.snapshot()))
    os.replace(tmp, path)


def load_snapshot_if_exists(emulator: Emulator, path: str) -> bool:
    if not os.path.exists(path):
        return False
    with open(path, "rb") as fh:
        emulator.restore(orjson.loads(fh.read()))
    return True
