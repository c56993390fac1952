"""The aiohttp application: sellers, auth, fault middleware and route wiring.

``Emulator`` owns all state; handlers reach it through ``request.app[EMULATOR]``. Public routes
authenticate a Bearer token to one seller; ``/_emulator/`` admin routes need no token.
"""

from __future__ import annotations

import contextlib
import itertools
import random
import re
from collections.abc import Awaitable, Callable
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

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_VERSION = re.compile(r"^\d{4}-\d{2}-\d{2}$")
JSON_HEADERS = {"Content-Type": "application/json", "Square-Version": "2025-08-20"}
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
        self.app_events_enabled: bool | None = None  # last EnableEvents/DisableEvents with the application token
        self._seq = itertools.count(1)
        self._build()

    def _build(self) -> None:
        self.merchants.clear()
        self.tokens.clear()
        self.application_token = self.config.application_token
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
        if cfg.customers or cfg.groups or cfg.segments or cfg.instant_profiles:
            for state in self.merchants.values():
                seed_merchant(state, customers=cfg.customers, groups=cfg.groups, segments=cfg.segments,
                              instant_profiles=cfg.instant_profiles, seed=self.seed)

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
                              events_enabled_by="application" if inherit else "default", next_seq=self.next_seq)
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
                "application": {"token": self.application_token, "events_enabled": self.app_events_enabled},
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


EMULATOR: web.AppKey[Emulator] = web.AppKey("emulator", Emulator)
MERCHANT_KEY: web.RequestKey[MerchantState] = web.RequestKey("square_merchant", MerchantState)
PRINCIPAL_KEY: web.RequestKey[Principal] = web.RequestKey("square_principal", Principal)


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return web.Response(body=raw, status=status, headers={**JSON_HEADERS, **(headers or {})})


def merchant_of(request: web.Request) -> MerchantState:
    return request[MERCHANT_KEY]


def principal_of(request: web.Request) -> Principal:
    return request[PRINCIPAL_KEY]


@web.middleware
async def square_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Auth + faults for /v2, and Square's error envelope for every SquareError."""
    emulator = request.app[EMULATOR]
    try:
        version = request.headers.get("Square-Version")
        if request.path.startswith("/v2/"):
            if version is not None and not _VERSION.match(version):
                raise SquareError(400, [{"code": "INVALID_SQUARE_VERSION_FORMAT", "detail": "Invalid Square-Version "
                                         f"format `{version}`, expected YYYY-MM-DD.", "field": "Square-Version",
                                         "category": "INVALID_REQUEST_ERROR"}])
            route = request.match_info.route
            operation = route.name or request.path if route is not None else request.path
            principal = emulator.authenticate(request, operation)
            request[PRINCIPAL_KEY] = principal
            if principal.merchant is not None:
                request[MERCHANT_KEY] = principal.merchant
            bucket = principal.merchant.merchant_id if principal.merchant is not None else "<application>"
            await emulator.faults.before(bucket, operation)
        response = await handler(request)
        if version is not None and request.path.startswith("/v2/"):
            response.headers["Square-Version"] = version  # Square echoes the version it used
        return response
    except SquareError as exc:
        return json_response(exc.body(), exc.status, exc.headers)
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed) as exc:
        # Square answers unknown endpoints with its JSON envelope, not an HTML page.
        detail = f"API endpoint for URL path `{request.path}` and HTTP method `{request.method}` is not found."
        return json_response({"errors": [{"code": "NOT_FOUND", "detail": detail,
                                          "category": "INVALID_REQUEST_ERROR"}]}, exc.status)


async def _on_cleanup(app: web.Application) -> None:
    emulator = app[EMULATOR]
    if emulator.config.snapshot_path:
        from .admin import save_snapshot

        save_snapshot(emulator, emulator.config.snapshot_path)
    await emulator.webhooks.close()


def create_app(config: EmulatorConfig | None = None) -> web.Application:
    """Build the emulator application (used by the CLI, ``testing.run_emulator`` and tests)."""
    from . import admin, routes_customers, routes_events, routes_groups
    from . import custom_attributes as attrs

    config = config or EmulatorConfig()
    emulator = Emulator(config)
    if config.snapshot_path:
        admin.load_snapshot_if_exists(emulator, config.snapshot_path)
    app = web.Application(middlewares=[square_middleware], client_max_size=16 * 1024 * 1024)
    app[EMULATOR] = emulator
    routes_customers.register(app)
    routes_groups.register(app)
    attrs.register_literal(app)
    routes_customers.register_item_routes(app)
    attrs.register_item(app)
    routes_events.register(app)
    admin.register(app)
    app.on_cleanup.append(_on_cleanup)
    return app
