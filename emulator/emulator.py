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

from . import errors
from .config import OAUTH, PERSONAL, TOKEN_KINDS, EmulatorConfig, Knobs
from .errors import SquareError
from .faults import FaultInjector
from .seeding import seed_merchant
from .state import MerchantState
from .webhooks import WebhookDispatcher

# The Events API: the only endpoints the application token is good for, and the ones OAuth tokens are refused by.
EVENTS_OPERATIONS = frozenset(("SearchEvents", "ListEventTypes", "EnableEvents", "DisableEvents"))


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
        self.merchants: dict[str, MerchantState] = {}
        self.tokens: dict[str, str] = {}
        self.application_token: str | None = config.application_token
        self.application_id = config.application_id  # the app every seller's token belongs to
        self.app_events_enabled: bool | None = None  # last EnableEvents/DisableEvents with the application token
        self._seq = itertools.count(1)
        self._build()

    def _build(self) -> None:
        self.merchants.clear()
        self.tokens.clear()
        self.application_token = self.config.application_token
        self.application_id = self.config.application_id
        self.app_events_enabled = None
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
            self.tokens[token] = merchant_id
            return old
        rng = random.Random(f"merchant:{self.seed}:{merchant_id}")
        inherit = self.knobs.events_enablement_scope == "application" and self.app_events_enabled is not None
        state = MerchantState(merchant_id, token, rng, self.knobs, self._publish, token_kind=token_kind,
                              events_enabled=self.app_events_enabled if inherit else None,
                              events_enabled_by="application" if inherit else "default", next_seq=self.next_seq,
                              application_id=self.application_id)
        self.merchants[merchant_id] = state
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
        """The caller of a /v2 request. The application token works for the Events API only (elsewhere it is
        an unknown token); the Events API refuses sellers' OAuth tokens."""
        header = request.headers.get("Authorization")
        if not header:
            raise errors.unauthorized_missing()
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise errors.unauthorized_invalid()
        events_api = operation in EVENTS_OPERATIONS
        if self.application_token is not None and token == self.application_token:
            if not events_api:
                raise errors.unauthorized_invalid()
            return Principal("application")
        merchant_id = self.tokens.get(token)
        if merchant_id is None:
            raise errors.unauthorized_invalid()
        state = self.merchants[merchant_id]
        if state.revoked:
            raise errors.token_revoked()
        if events_api and state.token_kind == OAUTH:
            raise errors.events_need_personal_token()
        return Principal(state.token_kind, state)

    def snapshot(self) -> dict[str, Any]:
        return {"seed": self.seed, "knobs": self.knobs.to_json(),
                "application": {"token": self.application_token, "events_enabled": self.app_events_enabled,
                                "application_id": self.application_id},
                "subscriptions": [s.to_json() | {"signature_key": s.signature_key}
                                  for s in self.webhooks.subscriptions],
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
        max_seq = max((int(e[3]) for m in snap.get("merchants", {}).values() for e in m.get("events", ())
                       if len(e) > 3), default=0)
        self._seq = itertools.count(max_seq + 1)
        for mid, msnap in snap.get("merchants", {}).items():
            state = self.add_seller(mid, msnap["token"], str(msnap.get("token_kind", PERSONAL)))
            state.restore(msnap)
        self.webhooks.subscriptions.clear()
        for sub in snap.get("subscriptions", []):
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
