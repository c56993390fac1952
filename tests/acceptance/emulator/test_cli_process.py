"""The emulator as a whole process (``python -m emulator``, what ``square-mirror emulator`` runs): CLI
webhook flags deliver signed notifications that the SDK helper verifies, for every seller."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
from aiohttp import web
from square.utils.webhooks_helper import verify_signature

ROOT = Path(__file__).resolve().parents[3]


async def test_cli_webhook_flags_deliver_signed_events_for_every_seller() -> None:
    received: list[tuple[str, str]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append((await request.text(), request.headers["x-square-hmacsha256-signature"]))
        return web.Response()

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    url = f"http://127.0.0.1:{port}/hook"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "emulator", "--port", "0", "--webhook-url", url, "--signature-key", "cli-key",
        "--seller", "MLONE:tok-1", "--seller", "MLTWO:tok-2", stdout=subprocess.PIPE, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout is not None
        info = json.loads(await proc.stdout.readline())
        assert [s["merchant_id"] for s in info["sellers"]] == ["MLONE", "MLTWO"]
        async with aiohttp.ClientSession() as s:
            for seller in info["sellers"]:
                async with s.post(info["emulator"] + "/v2/customers", json={"given_name": "Cli"},
                                  headers={"Authorization": f"Bearer {seller['token']}"}) as r:
                    assert r.status == 200
            async with s.post(info["emulator"] + "/_emulator/deliveries/drain") as r:
                assert (await r.json())["settled"] is True
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await proc.wait() == 0
        await runner.cleanup()
    assert sorted(json.loads(body)["merchant_id"] for body, _ in received) == ["MLONE", "MLTWO"]
    for body, sig in received:
        assert verify_signature(request_body=body, signature_header=sig, signature_key="cli-key",
                                notification_url=url)


async def test_cli_application_token_oauth_seller_and_instant_profiles() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "emulator", "--port", "0", "--seed", "3", "--customers", "5", "--instant-profiles", "4",
        "--seller", "MLONE:tok-1", "--seller", "MLOAUTH:tok-o:oauth", "--application-token", "app-pat",
        "--application-id", "sq0idp-cli-app",
        "--custom-attributes", '{"definitions": 4, "share": 1, "min": 2, "max": 2}',
        stdout=subprocess.PIPE, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout is not None
        info = json.loads(await proc.stdout.readline())
        assert info["sellers"] == [{"merchant_id": "MLONE", "token": "tok-1"},
                                   {"merchant_id": "MLOAUTH", "token": "tok-o", "token_kind": "oauth"}]
        assert info["application_token"] == "app-pat"
        base = info["emulator"]

        async def status(method: str, path: str, token: str) -> tuple[int, dict[str, object]]:
            async with aiohttp.ClientSession() as s, s.request(method, base + path, json={} if method == "POST"
                                                               else None,
                                                               headers={"Authorization": f"Bearer {token}"}) as r:
                return r.status, await r.json()

        assert (await status("PUT", "/v2/events/enable", "app-pat"))[0] == 200
        assert (await status("GET", "/v2/customers", "app-pat"))[0] == 401
        assert (await status("POST", "/v2/events", "tok-o"))[0] == 401
        assert (await status("POST", "/v2/events", "tok-1"))[0] == 200
        for token in ("tok-1", "tok-o"):
            code, body = await status("GET", "/v2/customers?count=true", token)
            assert code == 200 and body["count"] == 5  # the 4 instant profiles are never listed
        async with aiohttp.ClientSession() as s, s.get(base + "/_emulator/state?merchant_id=MLONE") as r:
            truth = await r.json()
        assert len(truth["customers"]) == 9 and truth["events_api"]["enabled"] is True
        assert len(truth["custom_attribute_definitions"]) == 4
        assert len(truth["custom_attributes"]) == 9 and all(len(v) == 2 for v in truth["custom_attributes"].values())
        async with aiohttp.ClientSession() as s, s.get(base + "/_emulator/custom-attribute-definitions") as r:
            assert "sq0idp-cli-app:favorite-drink" in (await r.json())["custom_attribute_definitions"]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await proc.wait() == 0
