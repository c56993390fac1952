"""Webhook delivery: Square's headers and signature, retries with backoff, and delivery faults.

Each (event, subscription) pair is one delivery task. Faults (loss, duplicate, reorder delay) are drawn
from an RNG seeded by (seed, event_id, subscription), so a run is reproducible whatever the timing.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import logging
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp
import orjson

from . import clock
from .config import DEFAULT_EVENT_TYPES, DEPRECATED_ALIASES, Knobs
from .events import rng_for

log = logging.getLogger("emulator.webhooks")
# Square's documented schedule (24 h window): minutes between attempts.
RETRY_SCHEDULE_SECONDS = (60, 120, 240, 480, 960, 1920, 3600, 7200, 14400, 28800, 28800)


def sign(signature_key: str, notification_url: str, body: bytes) -> str:
    """base64(HMAC-SHA256(key, notification_url + raw body)), Square's x-square-hmacsha256-signature."""
    digest = hmac.new(signature_key.encode(), notification_url.encode() + body, hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


@dataclass
class Subscription:
    """Where events go. Admin subscriptions belong to one seller (``merchant_id``); subscriptions made through the
    Webhook Subscriptions API (``api``) belong to the application (``merchant_id`` None) and get the events of every
    seller that authorized it (``WebhookDispatcher.audience``)."""

    id: str
    merchant_id: str | None
    url: str
    signature_key: str
    notification_url: str
    event_types: tuple[str, ...] = DEFAULT_EVENT_TYPES
    enabled: bool = True
    api: bool = False
    name: str | None = None
    api_version: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    previous_key: str | None = None  # after a key rotation: still signing until previous_key_until
    previous_key_until: float = 0.0

    def to_json(self) -> dict[str, Any]:
        out = {"id": self.id, "merchant_id": self.merchant_id, "url": self.url,
               "notification_url": self.notification_url, "event_types": list(self.event_types),
               "enabled": self.enabled}
        if self.api:
            out |= {"api": True, "name": self.name, "api_version": self.api_version}
        return out

    def snapshot(self) -> dict[str, Any]:
        return asdict(self) | {"event_types": list(self.event_types)}

    def signing_key(self, now: float) -> str:
        """The key deliveries are signed with now (the old one during a rotation overlap)."""
        if self.previous_key is not None and now < self.previous_key_until:
            return self.previous_key
        return self.signature_key


@dataclass
class DeliveryRecord:
    event_id: str
    type: str
    merchant_id: str
    subscription_id: str
    copy: int
    attempts: list[dict[str, Any]] = field(default_factory=list)
    status: str = "pending"  # pending | delivered | failed | lost | superseded

    def to_json(self) -> dict[str, Any]:
        last = self.attempts[-1] if self.attempts else {}
        return {"event_id": self.event_id, "type": self.type, "merchant_id": self.merchant_id,
                "subscription_id": self.subscription_id, "copy": self.copy, "status": self.status,
                "attempt": len(self.attempts), "http_status": last.get("http_status"),
                "attempts": self.attempts}


def _version_key(event: dict[str, Any]) -> tuple[tuple[str, str], int]:
    """What ``webhook_latest_version_only`` compares: (type, data.id) and the object's ``version``."""
    data = event.get("data") or {}
    obj = data.get("object") or {}
    for wrapper in ("customer", "custom_attribute", "custom_attribute_definition"):
        if isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    return (event["type"], str(data.get("id", ""))), int(obj.get("version", 0) or 0)


class WebhookDispatcher:
    def __init__(self, seed: int, knobs: Knobs) -> None:
        self.seed = seed
        self.knobs = knobs
        self.subscriptions: list[Subscription] = []
        self.log: list[DeliveryRecord] = []
        self.latest: dict[str, dict[tuple[str, str], int]] = {}  # subscription -> (type, customer) -> version
        self.tasks: set[asyncio.Task[None]] = set()
        self.session: aiohttp.ClientSession | None = None
        self._ids = itertools.count(1)
        self._idle = asyncio.Event()
        self._idle.set()
        # Whether the application gets a seller's event of a type (an application-level subscription's filter:
        # the seller authorized the app with the scope the event needs). None: every seller.
        self.audience: Callable[[str, str], bool] | None = None

    def _matches(self, sub: Subscription, merchant_id: str, event_type: str) -> bool:
        if event_type not in sub.event_types:
            return False
        if sub.merchant_id is None:
            return self.audience is None or self.audience(merchant_id, event_type)
        return sub.merchant_id == merchant_id

    def subscribe(self, merchant_id: str, url: str, signature_key: str, notification_url: str | None = None,
                  event_types: tuple[str, ...] | None = None) -> Subscription:
        sub = Subscription(id=f"wbhk_{next(self._ids):06d}", merchant_id=merchant_id, url=url,
                           signature_key=signature_key, notification_url=notification_url or url,
                           event_types=tuple(event_types or DEFAULT_EVENT_TYPES))
        self.subscriptions.append(sub)
        return sub

    def publish(self, merchant_id: str, event: dict[str, Any]) -> None:
        """Schedule deliveries of one event to every matching subscription (needs a running loop), and of its
        deprecated alias (a copy under the old type name, with its own event ID) to subscriptions naming that."""
        self._publish_one(merchant_id, event)
        alias = DEPRECATED_ALIASES.get(event["type"])
        if alias is not None and any(self._matches(s, merchant_id, alias) for s in self.subscriptions):
            event_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{event['event_id']}/{alias}"))
            self._publish_one(merchant_id, {**event, "type": alias, "event_id": event_id})

    def _publish_one(self, merchant_id: str, event: dict[str, Any]) -> None:
        subs = [s for s in self.subscriptions if s.enabled and self._matches(s, merchant_id, event["type"])]
        if not subs:
            return
        body = orjson.dumps(event)
        key, version = _version_key(event)
        for sub in subs:
            latest = self.latest.setdefault(sub.id, {})
            latest[key] = max(version, latest.get(key, -1))
            rng = rng_for(self.seed, event["event_id"], sub.id)
            copies = 2 if rng.random() < self.knobs.webhook_duplicate_rate else 1
            for copy in range(copies):
                rec = DeliveryRecord(event["event_id"], event["type"], merchant_id, sub.id, copy)
                self.log.append(rec)
                if len(self.log) > self.knobs.delivery_log_max:
                    del self.log[: max(1, self.knobs.delivery_log_max // 10)]
                if rng.random() < self.knobs.webhook_loss_rate:
                    rec.status = "lost"
                    continue
                delay = 0.0
                if rng.random() < self.knobs.webhook_reorder_rate:
                    delay = rng.uniform(0, self.knobs.webhook_reorder_max_delay_seconds)
                self._spawn(self._deliver(sub, body, rec, delay, key, version))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        self._idle.clear()
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not self.tasks:
            self._idle.set()

    def _superseded(self, sub: Subscription, key: tuple[str, str], version: int) -> bool:
        """Square sends only the latest version when updates to one profile race (knob-controlled)."""
        return self.knobs.webhook_latest_version_only and self.latest.get(sub.id, {}).get(key, -1) > version

    async def _deliver(self, sub: Subscription, body: bytes, rec: DeliveryRecord, delay: float,
                       key: tuple[str, str], version: int) -> None:
        if delay:
            await asyncio.sleep(delay)
        if self.session is None or self.session.closed:
            self.session = aiohttp.ClientSession()
        initial = clock.rfc3339_ms(clock.now())
        reason: str | None = None
        for attempt in range(self.knobs.webhook_max_retries + 1):
            if self._superseded(sub, key, version):
                rec.status = "superseded"
                return
            headers = {
                "Content-Type": "application/json",
                "User-Agent": "Square Connect v2",
                "x-square-hmacsha256-signature": sign(sub.signing_key(clock.now()), sub.notification_url, body),
                "square-environment": "Sandbox",
                "square-initial-delivery-timestamp": initial,
            }
            if attempt and reason:
                headers["square-retry-number"] = str(attempt)
                headers["square-retry-reason"] = reason
            entry: dict[str, Any] = {"at": clock.rfc3339_ms(clock.now()), "retry_number": attempt}
            rec.attempts.append(entry)
            try:
                timeout = aiohttp.ClientTimeout(total=self.knobs.webhook_timeout_seconds)
                async with self.session.post(sub.url, data=body, headers=headers, timeout=timeout) as resp:
                    await resp.read()
                    entry["http_status"] = resp.status
                    if 200 <= resp.status < 300:
                        rec.status = "delivered"
                        return
                    reason = "http_error"
            except TimeoutError:
                entry["error"] = reason = "http_timeout"
            except aiohttp.ClientSSLError:
                entry["error"] = reason = "ssl_error"
            except (aiohttp.ClientError, OSError):
                entry["error"] = reason = "other_error"
            if attempt >= self.knobs.webhook_max_retries:
                break
            wait = RETRY_SCHEDULE_SECONDS[min(attempt, len(RETRY_SCHEDULE_SECONDS) - 1)]
            await asyncio.sleep(wait * self.knobs.webhook_retry_scale)
        rec.status = "failed"

    async def send_once(self, sub: Subscription, body: bytes) -> int | None:
        """One signed POST outside the delivery machinery (TestWebhookSubscription): the status code the URL
        answered, None if it could not be reached."""
        if self.session is None or self.session.closed:
            self.session = aiohttp.ClientSession()
        headers = {"Content-Type": "application/json", "User-Agent": "Square Connect v2",
                   "x-square-hmacsha256-signature": sign(sub.signing_key(clock.now()), sub.notification_url, body),
                   "square-environment": "Sandbox",
                   "square-initial-delivery-timestamp": clock.rfc3339_ms(clock.now())}
        try:
            timeout = aiohttp.ClientTimeout(total=self.knobs.webhook_timeout_seconds)
            async with self.session.post(sub.url, data=body, headers=headers, timeout=timeout) as resp:
                await resp.read()
                return resp.status
        except (TimeoutError, aiohttp.ClientError, OSError):
            return None

    async def drain(self, timeout: float = 10.0) -> bool:
        """Wait until every pending delivery (retries included) has settled; False on timeout."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.session is not None:
            await self.session.close()
