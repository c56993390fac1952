"""Shared fixtures: every test gets its own fresh database and its own Redis database.

Databases are cloned from a migrated template (CREATE DATABASE ... TEMPLATE), which costs tens of
milliseconds, so tests stay independent without paying for a migration each.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import asyncpg
import pytest
import redis.asyncio as aioredis

from square_mirror.db import create_pool, migrate
from tests.scripted_square import square  # noqa: F401  (fixture: a scripted Square HTTP server)
from tests.services import ConfiguredServiceUnreachable, Services, start_services, with_database, with_redis_db

DatabaseFactory = Callable[[], Awaitable[str]]


@pytest.fixture(scope="session")
def services() -> Iterator[Services]:
    try:
        started = start_services()
    except ConfiguredServiceUnreachable as exc:
        pytest.exit(str(exc), returncode=2)
    os.environ.setdefault("SQUARE_MIRROR_TEST_SERVICES", f"{started.postgres_source}/{started.redis_source}")
    yield started
    started.close()


async def _admin_execute(admin_dsn: str, *statements: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def template_database(services: Services) -> Iterator[str]:
    name = f"sqm_tmpl_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    asyncio.run(_admin_execute(services.postgres_dsn, f'CREATE DATABASE "{name}"'))
    asyncio.run(migrate(with_database(services.postgres_dsn, name)))
    yield name
    asyncio.run(_admin_execute(services.postgres_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
async def database_factory(services: Services, template_database: str) -> AsyncIterator[DatabaseFactory]:
    """Creates fresh migrated databases on demand; all are dropped when the test ends."""
    created: list[str] = []

    async def make() -> str:
        name = f"sqm_t_{uuid.uuid4().hex[:12]}"
        await _admin_execute(services.postgres_dsn, f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
        created.append(name)
        return with_database(services.postgres_dsn, name)

    yield make
    for name in created:
        await _admin_execute(services.postgres_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def db_dsn(database_factory: DatabaseFactory) -> str:
    return await database_factory()


@pytest.fixture
async def db_pool(db_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(db_dsn, min_size=1, max_size=8)
    yield pool
    await pool.close()


_redis_dbs = itertools.cycle(range(1, 16))


@pytest.fixture
async def redis_url(services: Services) -> AsyncIterator[str]:
    """A Redis logical database of its own, empty at the start and flushed at the end."""
    url = with_redis_db(services.redis_url, next(_redis_dbs))
    client = aioredis.Redis.from_url(url)
    await client.flushdb()
    yield url
    await client.flushdb()
    await client.aclose()
