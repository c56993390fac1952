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
PERSONAL, OAUTH = "personal", "oauth"  # a seller's token: a personal access token (default) or an OAuth token
TOKEN_KINDS = (PERSONAL, OAUTH)
EVENTS_ENABLEMENT_SCOPES = ("seller", "application")
# Knobs whose value must be one of a fixed set (checked by Knobs.merge).
_CHOICES: dict[str, tuple[str, ...]] = {"events_enablement_scope": EVENTS_ENABLEMENT_SCOPES}


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
    event_types: tuple[str, ...] = CUSTOMER_EVENT_TYPES
    merchant_id: str | None = None  # None: every seller


@dataclass
class EmulatorConfig:
    """Everything ``create_app`` needs. ``sellers`` maps merchant ID -> token (default seller if empty);
    ``token_kinds`` maps merchant ID -> ``"oauth"`` for sellers whose token is an OAuth access token
    (absent: a personal access token). ``application_token`` is the application's own personal access
    token: accepted by the Events API only, where it covers every seller."""

    seed: int = 0
    sellers: dict[str, str] = field(default_factory=dict)
    token_kinds: dict[str, str] = field(default_factory=dict)
    application_token: str | None = None
    customers: int = 0  # seeded for each seller at start
    instant_profiles: int = 0  # seeded for each seller at start: profiles with no public information
    groups: int | None = None
    segments: int | None = None
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
