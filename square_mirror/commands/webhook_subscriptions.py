"""`square-mirror webhooks subscribe` and `square-mirror webhooks check`: the application's webhook subscription,
created and checked through the Webhook Subscriptions API (square_mirror/webhook_subscription.py)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from square_mirror.errors import SquareError
from square_mirror.settings import Settings, SettingsError
from square_mirror.webhook_subscription import DEFAULT_NAME, MATCH, SUBSCRIBED_EVENT_TYPES, check, subscribe

SUBSCRIBE_HELP = (
    "Create the application's webhook subscription (the Webhook Subscriptions API, with "
    "SQUARE_APPLICATION_ACCESS_TOKEN): the customer events, the visible custom-attribute events and "
    f"oauth.authorization.revoked ({len(SUBSCRIBED_EVENT_TYPES)} types), at the pinned SQUARE_VERSION. The "
    "signature key Square returns is written to --signature-key-file (mode 0600), or printed once."
)
if TYPE_CHECKING:
    from square_mirror.square_api import SquareClient

CHECK_HELP = (
    "Compare the application's live webhook subscription (the one at SQUARE_WEBHOOK_NOTIFICATION_URL, or the "
    "closest) with the configuration: the URL byte by byte, the event types, the API version, enabled. Exits 0 "
    "only when everything matches, 1 on a mismatch, 2 when it cannot check."
)


def configure(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    subscribe_parser = sub.add_parser("subscribe", help="create the application's webhook subscription",
                                      description=SUBSCRIBE_HELP)
    subscribe_parser.add_argument("--url", required=True,
                                  help="the notification URL (the receiver's, exactly as it is reached)")
    subscribe_parser.add_argument("--name", default=DEFAULT_NAME, help=f"the subscription's name (default "
                                  f"{DEFAULT_NAME})")
    subscribe_parser.add_argument("--signature-key-file", type=Path, metavar="F",
                                  help="write the signature key to this new file (mode 0600) instead of printing it")
    check_parser = sub.add_parser("check", help="compare the live webhook subscription with the configuration",
                                  description=CHECK_HELP)
    check_parser.add_argument("--json", action="store_true", help="machine-readable output")


def _client(settings: Settings) -> SquareClient:
    from square_mirror.square_api import SquareClient

    return SquareClient.from_settings(settings, timeout=settings.square_timeout_seconds)


def _write_key(path: Path, key: str) -> None:
    """A new file readable by its owner only (it is never overwritten: an old key may still be in use)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise SettingsError(f"--signature-key-file {str(path)!r} exists already; choose a new file") from None
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(key + "\n")


async def run_subscribe(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    if args.signature_key_file is not None and args.signature_key_file.exists():
        raise SettingsError(f"--signature-key-file {str(args.signature_key_file)!r} exists already; choose a new "
                            "file")
    async with _client(settings) as client:
        try:
            created = await subscribe(settings, client, args.url, args.name)
        except SquareError as exc:
            print(f"square-mirror: error: CreateWebhookSubscription failed: {exc}", file=sys.stderr)
            return 1
    print(f"created webhook subscription {created['id']} for {created.get('notification_url', args.url)} "
          f"({len(created.get('event_types') or [])} event types, API version {created.get('api_version')})")
    key = created.get("signature_key")
    if not isinstance(key, str) or not key:
        print("Square's answer has no signature key: copy it from the Developer Console into "
              "SQUARE_WEBHOOK_SIGNATURE_KEY")
        return 1
    if args.signature_key_file is not None:
        _write_key(args.signature_key_file, key)
        print(f"signature key written to {args.signature_key_file} (mode 0600): set "
              f"SQUARE_WEBHOOK_SIGNATURE_KEY_FILE={args.signature_key_file} for the receiver")
    else:
        print("signature key (shown this once; the receiver reads it from SQUARE_WEBHOOK_SIGNATURE_KEY, or from "
              f"the file SQUARE_WEBHOOK_SIGNATURE_KEY_FILE names):\n{key}")
    if settings.webhook_notification_url != args.url:
        print(f"set SQUARE_WEBHOOK_NOTIFICATION_URL={args.url} for the receiver (it signs with the URL byte for byte)")
    return 0


async def run_check(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    async with _client(settings) as client:
        result = await check(settings, client)
    if args.json:
        import orjson

        print(orjson.dumps(result.as_json()).decode())
    else:
        print("\n".join(result.lines()))
    if result.status == MATCH:
        return 0
    return 1 if result.mismatches else 2
