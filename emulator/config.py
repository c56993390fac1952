"""Configuration of an emulator instance: sellers, seed, subscriptions and realism knobs.

Knobs are a flat dataclass so ``PUT /_emulator/faults`` can merge a partial JSON object into them and
``GET`` can dump them; every UNCONFIRMED Square behaviour is a knob with the most plausible default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

# The documented default seller: a public test credential, not a secret.
DEFAULT_MERCHANT_ID, DEFAULT_TOKEN = ("MLEMULATOR001", "EAAAEmulatorDefaultToken")
CUSTOMER_EVENT_TYPES = ("customer.created", "customer.updated", "customer.deleted")
# Custom attribute events (FACTS-2 A.6): values fire `updated`/`deleted`, definitions `created`/`updated`/`deleted`;
# `.visible.*` for whatever the application can see, `.owned.*` in addition for what it owns.
_VALUE_ACTIONS, _DEFINITION_ACTIONS = ("updated", "deleted"), ("created", "updated", "deleted")
ATTRIBUTE_EVENT_TYPES = tuple(
    [f"customer.custom_attribute.{scope}.{action}" for scope in ("owned", "visible") for action in _VALUE_ACTIONS]
    + [f"customer.custom_attribute_definition.{scope}.{action}" for scope in ("owned", "visible")
       for action in _DEFINITION_ACTIONS])
# The deprecated (2022-05-12) event types, each a copy of its replacement: delivered only to subscriptions that name
# them, never recorded for SearchEvents.
DEPRECATED_ALIASES: dict[str, str] = {
    **{f"customer.custom_attribute.owned.{a}": f"customer.custom_attribute.{a}" for a in _VALUE_ACTIONS},
    **{f"customer.custom_attribute.visible.{a}": f"customer.custom_attribute.public.{a}" for a in _VALUE_ACTIONS},
    **{f"customer.custom_attribute_definition.owned.{a}": f"customer.custom_attribute_definition.{a}"
       for a in _DEFINITION_ACTIONS},
    **{f"customer.custom_attribute_definition.visible.{a}": f"customer.custom_attribute_definition.public.{a}"
       for a in _DEFINITION_ACTIONS},
}
# FACTS-2 B.6: fired once per revoked access token when a seller's authorization of the app is revoked.
REVOKED_EVENT_TYPE = "oauth.authorization.revoked"
# What a subscription without an explicit `event_types` list receives: every non-deprecated type.
DEFAULT_EVENT_TYPES = CUSTOMER_EVENT_TYPES + ATTRIBUTE_EVENT_TYPES + (REVOKED_EVENT_TYPE,)
DEFAULT_APPLICATION_ID = "sq0idp-square-mirror"  # the one application every seller's token belongs to
# The application's OAuth client secret (a public test value, not a secret) and its API version.
DEFAULT_APPLICATION_SECRET = "sq0csp-emulator-secret"  # noqa: S105 (a documented test value)
DEFAULT_API_VERSION = "2025-08-20"
PERSONAL, OAUTH = "personal", "oauth"  # a seller's token: a personal access token (default) or an OAuth token
TOKEN_KINDS = (PERSONAL, OAUTH)
EVENTS_ENABLEMENT_SCOPES = ("seller", "application")
# Knobs whose value must be one of a fixed set (checked by Knobs.merge).
_CHOICES: dict[str, tuple[str, ...]] = {"events_enablement_scope": EVENTS_ENABLEMENT_SCOPES,
                                        "custom_attribute_event_shape": ("bare", "wrapped"),
                                        "merge_custom_attributes": ("follow", "drop"),
                                        "expired_token_code": ("ACCESS_TOKEN_EXPIRED", "UNAUTHORIZED"),
                                        "subscription_timestamp_format": ("rfc3339", "go")}


@dataclass
class Knobs:
    """Realism and fault knobs; all default to a perfectly behaved Square."""

    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    endpoint_latency_ms: dict[str, float] = field(default_factory=dict)  # operation name -> extra ms
    error_500_rate: float = 0.0
    error_503_rate: float = 0.0
    rate_limit_rps: float = 0.0  # per seller; 0 disables the token bucket
    rate_limit_burst: int = 0  # 0 means "same as rps"
    retry_after: bool = True  # UNCONFIRMED: whether 429 carries Retry-After
    error_429_rate: float = 0.0
    index_lag_seconds: float = 0.0  # list/search eventual consistency
    cursor_ttl_seconds: float = 0.0  # 0: cursors never expire
    webhook_duplicate_rate: float = 0.0
    webhook_reorder_rate: float = 0.0
    webhook_reorder_max_delay_seconds: float = 2.0
    webhook_loss_rate: float = 0.0
    webhook_timeout_seconds: float = 10.0
    webhook_retry_scale: float = 1.0  # multiplies Square's retry schedule (1 min, 2 min, 4 min, ...)
    webhook_max_retries: int = 11  # UNCONFIRMED: 24 h schedule, 11 retries
    webhook_latest_version_only: bool = False  # skip a pending delivery once a newer version was published
    bulk_retrieve_resolves_merges: bool = False  # UNCONFIRMED
    stale_version_status: int = 400  # UNCONFIRMED
    stale_version_code: str = "BAD_REQUEST"  # UNCONFIRMED
    require_clear_null_header: bool = True  # UNCONFIRMED: null clears only with X-Clear-Null: true
    group_delete_bumps_version: bool = False  # UNCONFIRMED: deleting a group is silent for its members
    segment_change_touches_updated_at: bool = False
    event_log_max: int = 1_000_000  # per seller; oldest events dropped beyond it (memory bound)
    delivery_log_max: int = 200_000  # entries kept in GET /_emulator/deliveries
    merge_writes_note: bool = False  # write Square's "Merged on ..." note listing fields not transferred
    events_enabled_by_default: bool = False  # Square: "All events are disabled by default"
    # UNCONFIRMED: an event that occurs while the seller's token is revoked is searchable later. False: the app
    # had lost access when it happened (a revoked authorization); True: only the token failed (an expired or
    # replaced token, the authorization intact), so the event stays searchable.
    revoked_events_searchable: bool = False
    # UNCONFIRMED: EnableEvents/DisableEvents with the application token switch the sellers known at that
    # moment ("seller": a seller added later starts disabled) or the application as a whole ("application":
    # a seller added later inherits the application's state).
    events_enablement_scope: str = "seller"
    # UNCONFIRMED: UpdateCustomer/BulkUpdateCustomers may clear every public field (the profile becomes
    # hidden from List/Search). False: such an update is 400 BAD_REQUEST. The admin Dashboard edit always may.
    update_can_hide_profile: bool = True
    # UNCONFIRMED: custom attribute webhooks carry the attribute/definition directly in `data.object` ("bare", as in
    # every example of Square's) or wrapped as `{"custom_attribute": ...}` / `{"custom_attribute_definition": ...}`
    # ("wrapped", as the schema says).
    custom_attribute_event_shape: str = "bare"
    # UNCONFIRMED: the `key` inside `data.object` of `.owned.*` events is qualified (`{app id}:{key}`, as in the
    # examples) or the owner's simple key (False). `.visible.*` events always carry the qualified key.
    owned_event_keys_qualified: bool = True
    # UNCONFIRMED: deleting a definition (which deletes its values on every profile) also fires one value
    # `.deleted` event per profile (True), or only the definition's `.deleted` event (False).
    definition_delete_fires_value_events: bool = False
    # UNCONFIRMED: deleting a customer fires a value `.deleted` event for each of its custom attributes.
    customer_delete_fires_attribute_events: bool = False
    # UNCONFIRMED: on a merge the sources' custom attribute values follow to the new profile (newest source wins
    # per key: "follow") or are dropped ("drop").
    merge_custom_attributes: str = "follow"
    # UNCONFIRMED: a merge fires custom attribute events (`.updated` for the values landing on the new profile,
    # `.deleted` for the sources' values). False: none.
    merge_fires_attribute_events: bool = False
    # --- OAuth (FACTS-2 B) and the Webhook Subscriptions API (FACTS-2 C) ---
    # UNCONFIRMED: the code of the 401 an expired OAuth access token gets ("ACCESS_TOKEN_EXPIRED" or "UNAUTHORIZED").
    expired_token_code: str = "ACCESS_TOKEN_EXPIRED"  # noqa: S105 (an error code)
    # UNCONFIRMED #9: a code-flow refresh token never expires (0, the spec) or dies this many days after the last
    # access token issued with it expired (15: the staff forum reply and the legacy docs).
    refresh_token_grace_days: float = 0.0
    # UNCONFIRMED: an access token stays valid after a refresh until its own expiry (False: the refresh revokes the
    # authorization's earlier access tokens, which then get 401 ACCESS_TOKEN_REVOKED).
    refresh_keeps_old_access_token: bool = True
    # UNCONFIRMED: what ObtainToken answers for a bad grant (unknown, used or expired code, a wrong code_verifier or
    # redirect_uri, an unknown, spent, expired, invalidated or revoked refresh token).
    invalid_grant_status: int = 401
    invalid_grant_code: str = "UNAUTHORIZED"
    # UNCONFIRMED #11: RevokeToken with revoke_only_access_token=true fires oauth.authorization.revoked too.
    revoke_only_access_token_fires_webhook: bool = False
    # UNCONFIRMED #12: after UpdateWebhookSubscriptionSignatureKey, deliveries stay signed with the old key for
    # this many seconds (0: the new key signs everything from now on, retries of older events included).
    signature_key_overlap_seconds: float = 0.0
    # UNCONFIRMED #12: created_at/updated_at of webhook subscriptions: RFC 3339 ("rfc3339") or the Go-style strings
    # of the spec's examples ("go": "2022-01-10 23:29:48 +0000 UTC").
    subscription_timestamp_format: str = "rfc3339"

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def merge(self, patch: dict[str, Any]) -> None:
        """Apply a partial update; unknown keys are an error so typos in tests fail loudly."""
        names = {f.name: f for f in dataclasses.fields(self)}
        for key, value in patch.items():
            if key not in names:
                raise KeyError(key)
            current = getattr(self, key)
            if isinstance(current, bool):
                value = bool(value)
            elif isinstance(current, int) and not isinstance(current, bool):
                value = int(value)
            elif isinstance(current, float):
                value = float(value)
            elif isinstance(current, dict):
                value = {str(k): float(v) for k, v in dict(value).items()}
            elif isinstance(current, str):
                value = str(value)
                if key in _CHOICES and value not in _CHOICES[key]:
                    raise ValueError(f"{key} must be one of {', '.join(_CHOICES[key])}, not {value!r}")
            setattr(self, key, value)


@dataclass
class SubscriptionSpec:
    url: str
    signature_key: str
    notification_url: str | None = None
    event_types: tuple[str, ...] = DEFAULT_EVENT_TYPES
    merchant_id: str | None = None  # None: every seller


@dataclass
class EmulatorConfig:
    """Everything ``create_app`` needs. ``sellers`` maps merchant ID -> token (default seller if empty);
    ``token_kinds`` maps merchant ID -> ``"oauth"`` for sellers whose token is an OAuth access token
    (absent: a personal access token). ``application_token`` is the application's own personal access
    token: accepted by the Events API only, where it covers every seller. ``application_id`` is that
    application's ID (what owns the custom attribute definitions created through the public API)."""

    seed: int = 0
    sellers: dict[str, str] = field(default_factory=dict)
    token_kinds: dict[str, str] = field(default_factory=dict)
    application_token: str | None = None
    # The application every seller's token (personal or OAuth) belongs to: definitions created through the public
    # API are owned by it; other applications' keys look like `{their id}:{key}` to it.
    application_id: str = DEFAULT_APPLICATION_ID
    # The application's OAuth client secret (ObtainToken's client_secret, RevokeToken's `Authorization: Client ...`),
    # its registered OAuth redirect URL (None: the authorize URL must carry redirect_uri) and its API version (the
    # default api_version of the webhook subscriptions it creates).
    application_secret: str = DEFAULT_APPLICATION_SECRET
    oauth_redirect_url: str | None = None
    application_api_version: str = DEFAULT_API_VERSION
    customers: int = 0  # seeded for each seller at start
    instant_profiles: int = 0  # seeded for each seller at start: profiles with no public information
    groups: int | None = None
    segments: int | None = None
    # Custom attributes seeded for each seller at start (the admin seed's `custom_attributes`, e.g.
    # `{"definitions": 8, "share": 0.3, "min": 1, "max": 5}`); None: none.
    custom_attributes: dict[str, Any] | None = None
    subscriptions: list[SubscriptionSpec] = field(default_factory=list)
    knobs: Knobs = field(default_factory=Knobs)
    snapshot_path: str | None = None

    def seller_map(self) -> dict[str, str]:
        return dict(self.sellers) if self.sellers else {DEFAULT_MERCHANT_ID: DEFAULT_TOKEN}

    def token_kind(self, merchant_id: str) -> str:
        kind = self.token_kinds.get(merchant_id, PERSONAL)
        if kind not in TOKEN_KINDS:
            raise ValueError(f"token kind must be one of {', '.join(TOKEN_KINDS)}, not {kind!r}")
        return kind
