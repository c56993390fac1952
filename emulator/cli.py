"""``square-mirror emulator``: run the emulator as a server until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence

import orjson

from .config import DEFAULT_APPLICATION_SECRET, PERSONAL, TOKEN_KINDS, EmulatorConfig, Knobs, SubscriptionSpec
from .testing import run_emulator


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="square-mirror emulator", description="Run the Square emulator.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--customers", type=int, default=0, help="customers seeded for each seller at start")
    p.add_argument("--instant-profiles", type=int, default=0,
                   help="instant profiles without public information seeded for each seller at start")
    p.add_argument("--custom-attributes", metavar="JSON",
                   help='custom attributes seeded for each seller at start, e.g. '
                        '\'{"definitions": 8, "share": 0.3, "min": 1, "max": 5, "hidden": 1}\'')
    p.add_argument("--application-id", metavar="ID",
                   help="the application every seller's token belongs to (owns the definitions created through the "
                        "public API; default sq0idp-square-mirror)")
    p.add_argument("--application-secret", metavar="SECRET",
                   help="the application's OAuth client secret (default sq0csp-emulator-secret)")
    p.add_argument("--oauth-redirect-url", metavar="URL",
                   help="the application's registered OAuth redirect URL (default: none; the authorize URL must then "
                        "carry redirect_uri)")
    p.add_argument("--webhook-url")
    p.add_argument("--signature-key")
    p.add_argument("--notification-url", help="URL the signature is computed over (default: --webhook-url)")
    p.add_argument("--seller", action="append", default=[], metavar="MERCHANT_ID:TOKEN[:oauth]",
                   help="a seller and its token; ':oauth' marks an OAuth token (refused by the Events API), "
                        "':personal' (the default) a personal access token")
    p.add_argument("--application-token", metavar="TOKEN",
                   help="the application's personal access token: accepted by the Events API only, for every seller")
    p.add_argument("--snapshot", metavar="PATH", help="restore at start if it exists, save on shutdown")
    p.add_argument("--knob", action="append", default=[], metavar="NAME=JSON",
                   help="set a fault/realism knob, e.g. --knob index_lag_seconds=2 (repeatable)")
    p.add_argument("--latency-ms", type=float)
    p.add_argument("--rate-limit-rps", type=float)
    p.add_argument("--error-500-rate", type=float)
    p.add_argument("--index-lag-seconds", type=float)
    return p


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    sellers: dict[str, str] = {}
    kinds: dict[str, str] = {}
    for spec in args.seller:
        mid, sep, token = spec.partition(":")
        kind = PERSONAL
        head, colon, tail = token.rpartition(":")
        if colon and tail in TOKEN_KINDS:
            token, kind = head, tail
        if not sep or not mid or not token:
            raise SystemExit(f"--seller expects MERCHANT_ID:TOKEN[:oauth], got {spec!r}")
        sellers[mid] = token
        if kind != PERSONAL:
            kinds[mid] = kind
    if args.application_token is not None and (not args.application_token
                                               or args.application_token in sellers.values()):
        raise SystemExit("--application-token must be non-empty and differ from every seller's token")
    knobs = Knobs()
    patch: dict[str, object] = {}
    for item in args.knob:
        name, _, value = item.partition("=")
        patch[name] = orjson.loads(value)
    for name in ("latency_ms", "rate_limit_rps", "error_500_rate", "index_lag_seconds"):
        if getattr(args, name) is not None:
            patch[name] = getattr(args, name)
    try:
        knobs.merge(patch)
    except (KeyError, TypeError, ValueError) as exc:
        raise SystemExit(f"--knob: unknown or invalid knob: {exc}") from None
    subs = []
    if args.webhook_url:
        if not args.signature_key:
            raise SystemExit("--webhook-url needs --signature-key")
        subs.append(SubscriptionSpec(url=args.webhook_url, signature_key=args.signature_key,
                                     notification_url=args.notification_url))
    try:
        custom_attributes = orjson.loads(args.custom_attributes) if args.custom_attributes else None
    except orjson.JSONDecodeError:
        raise SystemExit(f"--custom-attributes expects a JSON object, got {args.custom_attributes!r}") from None
    extra = {"application_id": args.application_id} if args.application_id else {}
    return EmulatorConfig(application_secret=args.application_secret or DEFAULT_APPLICATION_SECRET,
                          oauth_redirect_url=args.oauth_redirect_url, seed=args.seed, sellers=sellers,
                          token_kinds=kinds,
                          application_token=args.application_token, customers=args.customers,
                          instant_profiles=args.instant_profiles, subscriptions=subs, knobs=knobs,
                          snapshot_path=args.snapshot, custom_attributes=custom_attributes, **extra)


async def _serve(config: EmulatorConfig, host: str, port: int) -> None:
    async with run_emulator(config, host=host, port=port) as handle:
        line: dict[str, object] = {
            "emulator": handle.base_url,
            "application_id": handle.emulator.application_id,
            "sellers": [{"merchant_id": s.merchant_id, "token": s.token}
                        | ({"token_kind": s.token_kind} if s.token_kind != PERSONAL else {})
                        for s in handle.emulator.merchants.values()]}
        if handle.emulator.application_token is not None:
            line["application_token"] = handle.emulator.application_token
        sys.stdout.write(orjson.dumps(line).decode() + "\n")
        sys.stdout.flush()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    config = config_from_args(args)
    asyncio.run(_serve(config, args.host, args.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
