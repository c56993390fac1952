"""Where the tests' real Postgres and Redis come from.

Order: DATABASE_URL / REDIS_URL when set (and then they must work: an unreachable configured URL stops the
run with a clear message, never a silent fallback), else the local services on their standard ports, else
the embedded fallbacks. SQUARE_MIRROR_TEST_EMBEDDED=1 forces the embedded ones.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from square_mirror.embedded import EmbeddedPostgres, EmbeddedRedis, tcp_reachable

LOCAL_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
LOCAL_REDIS = "redis://127.0.0.1:6379/0"


class ConfiguredServiceUnreachable(RuntimeError):
    pass


@dataclass
class Services:
    postgres_dsn: str
    redis_url: str
    postgres_source: str
    redis_source: str
    _embedded: list[EmbeddedPostgres | EmbeddedRedis] = field(default_factory=list)

    def close(self) -> None:
        for server in reversed(self._embedded):
            server.stop()


def _forced_embedded() -> bool:
    return os.environ.get("SQUARE_MIRROR_TEST_EMBEDDED", "").strip().lower() in ("1", "true", "yes")


def _url_reachable(url: str) -> bool:
    parts = urlsplit(url)
    if parts.hostname is None:
        return True  # unix socket DSNs: let the driver report problems
    default_port = 5432 if parts.scheme.startswith("postgres") else 6379
    try:
        return tcp_reachable(parts.hostname, parts.port or default_port, timeout=2.0)
    except (OSError, socket.gaierror, ValueError):
        return False


def start_services() -> Services:
    embedded: list[EmbeddedPostgres | EmbeddedRedis] = []
    forced = _forced_embedded()

    configured_pg = os.environ.get("DATABASE_URL", "").strip()
    if forced:
        pg = EmbeddedPostgres()
        embedded.append(pg)
        dsn, pg_source = pg.start(), "embedded (forced)"
    elif configured_pg:
        if not _url_reachable(configured_pg):
            raise ConfiguredServiceUnreachable("DATABASE_URL is set but Postgres cannot be reached")
        dsn, pg_source = configured_pg, "DATABASE_URL"
    elif _url_reachable(LOCAL_POSTGRES):
        dsn, pg_source = LOCAL_POSTGRES, "local service"
    else:
        pg = EmbeddedPostgres()
        embedded.append(pg)
        dsn, pg_source = pg.start(), "embedded"

    configured_redis = os.environ.get("REDIS_URL", "").strip()
    if forced:
        redis = EmbeddedRedis()
        embedded.append(redis)
        redis_url, redis_source = redis.start(), "embedded (forced)"
    elif configured_redis:
        if not _url_reachable(configured_redis):
            for server in embedded:
                server.stop()
            raise ConfiguredServiceUnreachable("REDIS_URL is set but Redis cannot be reached")
        redis_url, redis_source = configured_redis, "REDIS_URL"
    elif _url_reachable(LOCAL_REDIS):
        redis_url, redis_source = LOCAL_REDIS, "local service"
    else:
        redis = EmbeddedRedis()
        embedded.append(redis)
        redis_url, redis_source = redis.start(), "embedded"
    return Services(dsn, redis_url, pg_source, redis_source, embedded)


def with_database(dsn: str, database: str) -> str:
    """The same server DSN pointed at another database (works for TCP and unix-socket DSNs)."""
    parts = urlsplit(dsn)
    return parts._replace(path="/" + database).geturl()


def with_redis_db(url: str, db: int) -> str:
    parts = urlsplit(url)
    return parts._replace(path=f"/{db}").geturl()


def free_port_for_tests() -> int:
    from square_mirror.embedded import free_port

    return free_port()
