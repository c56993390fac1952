"""The application's webhook subscription: what it must be, creating it, and checking the live one against the
configuration (``square-mirror webhooks subscribe`` / ``check``, and ``status``).

One subscription serves every seller that authorized the application, and Square signs each delivery with the
notification URL byte for byte: a URL that differs by one character makes every signature fail. So the check
compares the URL byte by byte and names the first position that differs, then the event types, the API version
and whether the subscription is enabled. The Webhook Subscriptions API takes the application's personal access
token only (``SQUARE_APPLICATION_ACCESS_TOKEN``), never a seller's OAuth token.
"""

from __future__ import annotations

import difflib
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from square_mirror.constants import CUSTOMER_EVENT_TYPES
from square_mirror.errors import SquareError
from square_mirror.settings import Settings, SettingsError

if TYPE_CHECKING:
    from square_mirror.square_api import SquareClient

REVOCATION_EVENT: Final = "oauth.authorization.revoked"
# The event types the mirror subscribes to: customers, the custom-attribute events of every visible attribute
# (the mirror's own and other applications' and the seller's fields), and revocations.
SUBSCRIBED_EVENT_TYPES: Final = tuple(sorted(
    CUSTOMER_EVENT_TYPES
    | {"customer.custom_attribute.visible.updated", "customer.custom_attribute.visible.deleted"}
    | {f"customer.custom_attribute_definition.visible.{change}" for change in ("created", "updated", "deleted")}
    | {REVOCATION_EVENT}
))
DEFAULT_NAME: Final = "square-mirror"
MATCH, MISMATCH, OFF, ERROR = "match", "mismatch", "off", "error"


@dataclass
class CheckResult:
    """``status``: match (exit 0), mismatch, off (no application token or no URL configured), or error."""

    status: str
    expected_url: str | None = None
    subscription_id: str | None = None
    subscription_url: str | None = None
    mismatches: list[str] = field(default_factory=list)
    missing_event_types: list[str] = field(default_factory=list)
    extra_event_types: list[str] = field(default_factory=list)
    reason: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"status": self.status, "expected_url": self.expected_url, "subscription_id": self.subscription_id,
                "subscription_url": self.subscription_url, "mismatches": self.mismatches,
                "missing_event_types": self.missing_event_types, "extra_event_types": self.extra_event_types,
                "reason": self.reason}

    def lines(self) -> list[str]:
        if self.status == OFF:
            return [f"webhook subscription check: off ({self.reason})"]
        if self.status == ERROR:
            return [f"webhook subscription check: error ({self.reason})"]
        head = f"webhook subscription {self.subscription_id}: " if self.subscription_id else "webhook subscription: "
        if self.status == MATCH:
            return [head + f"matches the configuration ({self.expected_url})"]
        return [head + f"{len(self.mismatches)} mismatch(es)", *(f"  - {m}" for m in self.mismatches)]


def first_difference(expected: str, found: str) -> str | None:
    """Where two URLs first differ, byte by byte (UTF-8), as a sentence; None when they are equal."""
    a, b = expected.encode("utf-8"), found.encode("utf-8")
    if a == b:
        return None
    position = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))

    def at(raw: bytes) -> str:
        return repr(raw[position:position + 1].decode("utf-8", "replace")) if position < len(raw) else "the end"

    return (f"notification URL differs at byte {position + 1}: the configuration has {at(a)}, the subscription "
            f"{at(b)} (configured {expected!r}, subscribed {found!r})")


def closest(subscriptions: list[dict[str, Any]], url: str) -> dict[str, Any] | None:
    """The subscription whose URL is ``url``, else the one whose URL is most like it (enabled ones first)."""
    if not subscriptions:
        return None
    exact = [s for s in subscriptions if s.get("notification_url") == url]
    if exact:
        return max(exact, key=lambda s: bool(s.get("enabled")))
    return max(subscriptions, key=lambda s: (
        difflib.SequenceMatcher(None, url, str(s.get("notification_url") or "")).ratio(), bool(s.get("enabled"))))


def compare(subscription: dict[str, Any] | None, url: str, api_version: str) -> CheckResult:
    """Each way ``subscription`` differs from what the configuration needs."""
    result = CheckResult(MISMATCH, expected_url=url)
    if subscription is None:
        result.mismatches.append("the application has no webhook subscription (square-mirror webhooks subscribe)")
        return result
    result.subscription_id = str(subscription.get("id"))
    result.subscription_url = str(subscription.get("notification_url") or "")
    difference = first_difference(url, result.subscription_url)
    if difference:
        result.mismatches.append(difference)
    types = {str(t) for t in subscription.get("event_types") or []}
    result.missing_event_types = sorted(set(SUBSCRIBED_EVENT_TYPES) - types)
    result.extra_event_types = sorted(types - set(SUBSCRIBED_EVENT_TYPES))
    if result.missing_event_types:
        result.mismatches.append(f"event types missing: {', '.join(result.missing_event_types)}")
    if result.extra_event_types:
        result.mismatches.append(f"event types not needed: {', '.join(result.extra_event_types)}")
    if subscription.get("api_version") != api_version:
        result.mismatches.append(f"API version is {subscription.get('api_version')!r}, the mirror pins "
                                 f"{api_version!r} (SQUARE_VERSION)")
    if subscription.get("enabled") is not True:
        result.mismatches.append("the subscription is disabled")
    if not result.mismatches:
        result.status = MATCH
    return result


async def check(settings: Settings, client: SquareClient) -> CheckResult:
    """The live subscription against SQUARE_WEBHOOK_NOTIFICATION_URL, the event types and SQUARE_VERSION."""
    url = settings.webhook_notification_url
    if settings.square_application_access_token is None:
        return CheckResult(OFF, expected_url=url, reason="SQUARE_APPLICATION_ACCESS_TOKEN is not set: the Webhook "
                           "Subscriptions API takes the application's personal access token only")
    if not url:
        return CheckResult(OFF, reason="SQUARE_WEBHOOK_NOTIFICATION_URL is not set")
    try:
        subscriptions = await client.list_webhook_subscriptions(settings.square_application_access_token.reveal())
    except SquareError as exc:
        return CheckResult(ERROR, expected_url=url, reason=f"ListWebhookSubscriptions failed: {exc}")
    return compare(closest(subscriptions, url), url, settings.square_version)


async def subscribe(settings: Settings, client: SquareClient, url: str, name: str) -> dict[str, Any]:
    """Create the application's subscription; the answer carries the signature key (handle it as a secret)."""
    if settings.square_application_access_token is None:
        raise SettingsError("SQUARE_APPLICATION_ACCESS_TOKEN is not set: the Webhook Subscriptions API takes the "
                            "application's personal access token only")
    body = {"name": name, "enabled": True, "event_types": list(SUBSCRIBED_EVENT_TYPES), "notification_url": url,
            "api_version": settings.square_version}
    return await client.create_webhook_subscription(settings.square_application_access_token.reveal(), body,
                                                    idempotency_key=str(uuid.uuid4()))
