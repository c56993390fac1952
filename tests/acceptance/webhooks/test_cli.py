"""`square-mirror webhooks` as a whole process: configuration, a signed delivery, logs, SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import aiohttp

from tests.factories import signed_headers
from tests.integration.webhooks.support import (
    CUSTOMER_CREATED,
    KEY,
    NOTIFICATION_URL,
    PII_STRINGS,
    queued_jobs,
)
from tests.services import free_port_for_tests


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(extra)
    return env


def test_missing_configuration_is_one_line_naming_the_variable() -> None:
    env = _env(REDIS_URL="redis://127.0.0.1:6379/0", SQUARE_WEBHOOK_NOTIFICATION_URL=NOTIFICATION_URL)
    result = subprocess.run(
        [sys.executable, "-m", "square_mirror", "webhooks", "--port", "1"],
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert result.returncode == 2
    assert "SQUARE_WEBHOOK_SIGNATURE_KEY is not set" in result.stderr
    assert result.stderr.strip().count("\n") == 0


def test_help_lists_the_webhooks_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "square_mirror", "webhooks", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    assert "--host" in result.stdout and "--port" in result.stdout


async def test_the_process_queues_a_signed_delivery_and_stops_cleanly_on_sigterm(redis_url: str) -> None:
    port = free_port_for_tests()
    env = _env(
        REDIS_URL=redis_url,
        SQUARE_WEBHOOK_SIGNATURE_KEY=f"old-key-123,{KEY}",
        SQUARE_WEBHOOK_NOTIFICATION_URL=NOTIFICATION_URL,
        LOG_LEVEL="INFO",
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "square_mirror", "webhooks", "--host", "127.0.0.1", "--port", str(port),
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 30
            while True:
                try:
                    async with http.get(f"http://127.0.0.1:{port}/readyz") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                assert time.monotonic() < deadline, "the receiver did not become ready"
                await asyncio.sleep(0.1)
            body = CUSTOMER_CREATED.encode()
            headers = signed_headers(body)
            async with http.post(f"http://127.0.0.1:{port}/square/webhooks", data=body, headers=headers) as response:
                assert response.status == 200
        process.send_signal(signal.SIGTERM)
        stdout, stderr = await asyncio.wait_for(process.communicate(), 15)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, stderr.decode()
    lines = [json.loads(line) for line in stdout.decode().splitlines() if line.startswith("{")]
    events = [line["event"] for line in lines]
    assert events[0] == "webhooks_listening"
    assert events[-2:] == ["webhooks_stopping", "webhooks_stopped"]
    [delivery] = [line for line in lines if line["event"] == "webhook"]
    assert delivery["outcome"] == "enqueued"
    assert delivery["event_id"] == "e12b5591-e0b6-4967-810a-307c7efcb1a7"
    output = stdout.decode() + stderr.decode()
    assert headers["x-square-hmacsha256-signature"] not in output
    assert KEY not in output
    assert not any(pii in output for pii in PII_STRINGS)
    assert [j.job_id for j in await queued_jobs(redis_url)] == ["e12b5591-e0b6-4967-810a-307c7efcb1a7"]
