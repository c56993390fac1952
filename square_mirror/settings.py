"""One typed settings object, read once from the environment.

Every variable is validated at start-up so a misconfigured deployment fails with one line naming the
variable instead of failing later, mid-sync, in a way that looks like a Square outage. Secrets are wrapped in
:class:`Secret` so that neither ``repr`` nor a log line can reveal them.
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from square_mirror.constants import (
    DEFAULT_SQUARE_BASE_URL,
    DEFAULT_SQUARE_VERSION,
    LANE_SCHEDULER_CRON,
    LANE_SCHEDULERS,
)

LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_SQUARE_VERSION_RE: Final = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_MERCHANT_ID_RE: Final = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class SettingsError(ValueError):
    """A configuration value is missing or malformed; the message names the variable."""


class Secret:
    """A string that never shows itself in ``repr``/``str``; call :meth:`reveal` where it is really used."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class Settings:
    database_url: Secret | None = None
    redis_url: Secret | None = None
    square_base_url: str = DEFAULT_SQUARE_BASE_URL
    square_version: str = DEFAULT_SQUARE_VERSION
    square_access_token: Secret | None = None
    square_tokens_file: Path | None = None
    square_merchant_id: str | None = None
    square_application_access_token: Secret | None = None
    square_application_id: str | None = None
    square_application_secret: Secret | None = None
    square_oauth_redirect_url: str | None = None
    encryption_keys: tuple[Secret, ...] = ()
    token_refresh_age_days: float = 7.0
    webhook_signature_keys: tuple[Secret, ...] = ()
    webhook_notification_url: str | None = None
    webhook_path: str = "/square/webhooks"
    webhook_max_body_bytes: int = 256 * 1024
    log_level: str = "INFO"
    square_max_requests_per_second: float = 50.0
    square_request_burst: int = 100
    square_timeout_seconds: float = 15.0
    worker_max_jobs: int = 200
    worker_poll_delay: float = 0.05
    worker_metrics_port: int = 9101
    worker_job_timeout_seconds: float = 30.0
    worker_max_tries: int = 40
    worker_retry_max_delay_seconds: float = 1800.0
    worker_unauthorized_retry_seconds: float = 900.0
    worker_shutdown_grace_seconds: int = 20
    worker_fetch_window_ms: float = 5.0
    worker_db_pool_size: int = 20
    backfill_concurrency: int = 8
    backfill_custom_attribute_concurrency: int = 256
    reconcile_overlap_seconds: float = 120.0
    staleness_limit_factor: float = 2.0
    lane_scheduler: str = LANE_SCHEDULER_CRON
    lane_budget_share: float = 0.3
    extra: Mapping[str, str] = field(default_factory=dict, repr=False)

    def require_database_url(self) -> str:
        if self.database_url is None:
            raise SettingsError("DATABASE_URL is not set (e.g. postgresql://user@host:5432/dbname)")
        return self.database_url.reveal()

    def require_redis_url(self) -> str:
        if self.redis_url is None:
            raise SettingsError("REDIS_URL is not set (e.g. redis://127.0.0.1:6379/0)")
        return self.redis_url.reveal()

    def require_webhook_config(self) -> tuple[tuple[Secret, ...], str]:
        if not self.webhook_signature_keys:
            raise SettingsError("SQUARE_WEBHOOK_SIGNATURE_KEY is not set (the subscription's signature key)")
        if not self.webhook_notification_url:
            raise SettingsError(
                "SQUARE_WEBHOOK_NOTIFICATION_URL is not set (the subscription's URL, byte for byte)"
            )
        return self.webhook_signature_keys, self.webhook_notification_url

    def secrets(self) -> list[str]:
        """Every secret value, so the log redactor can scrub them wherever they appear."""
        values = [s.reveal() for s in (*self.webhook_signature_keys, *self.encryption_keys)]
        for s in (self.square_access_token, self.square_application_access_token, self.square_application_secret,
                  self.database_url, self.redis_url):
            if s is not None:
                values.append(s.reveal())
        return [v for v in values if len(v) >= 6]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        return cls(
            database_url=_url(env, "DATABASE_URL", ("postgres", "postgresql")),
            # No unix://: arq's settings and the receiver's own connection take a host and port, so a socket
            # path would silently connect to 127.0.0.1:6379 instead.
            redis_url=_url(env, "REDIS_URL", ("redis", "rediss")),
            square_base_url=_base_url(env),
            square_version=_square_version(env),
            square_access_token=_token(env),
            square_tokens_file=_tokens_file(env),
            square_merchant_id=_merchant_id(env),
            square_application_access_token=_application_token(env),
            square_application_id=_application_id(env),
            square_application_secret=_application_secret(env),
            square_oauth_redirect_url=_oauth_redirect_url(env),
            encryption_keys=_encryption_keys(env),
            token_refresh_age_days=_number(env, "TOKEN_REFRESH_AGE_DAYS", 7.0, minimum=0.001),
            webhook_signature_keys=_signature_keys(env),
            webhook_notification_url=_notification_url(env),
            webhook_path=_webhook_path(env),
            webhook_max_body_bytes=_positive_int(env, "WEBHOOK_MAX_BODY_BYTES", 256 * 1024),
            log_level=_log_level(env),
            square_max_requests_per_second=_number(env, "SQUARE_MAX_REQUESTS_PER_SECOND", 50.0, minimum=0.0),
            square_request_burst=_positive_int(env, "SQUARE_REQUEST_BURST", 100),
            square_timeout_seconds=_number(env, "SQUARE_TIMEOUT_SECONDS", 15.0, minimum=0.1),
            worker_max_jobs=_positive_int(env, "WORKER_MAX_JOBS", 200),
            worker_poll_delay=_number(env, "WORKER_POLL_DELAY", 0.05, minimum=0.001),
            worker_metrics_port=_port(env, "WORKER_METRICS_PORT", 9101),
            worker_job_timeout_seconds=_number(env, "WORKER_JOB_TIMEOUT_SECONDS", 30.0, minimum=5.0),
            worker_max_tries=_positive_int(env, "WORKER_MAX_TRIES", 40),
            worker_retry_max_delay_seconds=_number(env, "WORKER_RETRY_MAX_DELAY_SECONDS", 1800.0, minimum=1.0),
            worker_unauthorized_retry_seconds=_number(env, "WORKER_UNAUTHORIZED_RETRY_SECONDS", 900.0, minimum=1.0),
            worker_shutdown_grace_seconds=_positive_int(env, "WORKER_SHUTDOWN_GRACE_SECONDS", 20),
            worker_fetch_window_ms=_number(env, "WORKER_FETCH_WINDOW_MS", 5.0, minimum=0.0),
            worker_db_pool_size=_positive_int(env, "WORKER_DB_POOL_SIZE", 20),
            backfill_concurrency=_positive_int(env, "BACKFILL_CONCURRENCY", 8),
            backfill_custom_attribute_concurrency=_positive_int(env, "BACKFILL_CUSTOM_ATTRIBUTE_CONCURRENCY", 256),
            reconcile_overlap_seconds=_number(env, "RECONCILE_OVERLAP_SECONDS", 120.0, minimum=0.0),
            staleness_limit_factor=_number(env, "STALENESS_LIMIT_FACTOR", 2.0, minimum=1.0),
            lane_scheduler=_lane_scheduler(env),
            lane_budget_share=_share(env, "LANE_BUDGET_SHARE", 0.3),
        )


def _get(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    if value is None:
        return None
    value = value.strip()
    return value or None


def _url(env: Mapping[str, str], name: str, schemes: tuple[str, ...]) -> Secret | None:
    value = _get(env, name)
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in schemes:
        raise SettingsError(f"{name} must be a URL with scheme {' or '.join(schemes)}, got scheme {parts.scheme!r}")
    if not parts.netloc and "host=" not in parts.query:
        raise SettingsError(f"{name} has no host")
    return Secret(value)


def _base_url(env: Mapping[str, str]) -> str:
    value = _get(env, "SQUARE_BASE_URL") or DEFAULT_SQUARE_BASE_URL
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SettingsError(f"SQUARE_BASE_URL must be an http(s) URL, got {value!r}")
    if parts.path not in ("", "/"):
        raise SettingsError("SQUARE_BASE_URL must be the host root, without /v2 or another path")
    return value.rstrip("/")


def _square_version(env: Mapping[str, str]) -> str:
    value = _get(env, "SQUARE_VERSION") or DEFAULT_SQUARE_VERSION
    if not _SQUARE_VERSION_RE.match(value):
        raise SettingsError(f"SQUARE_VERSION must look like YYYY-MM-DD, got {value!r}")
    return value


def _token(env: Mapping[str, str]) -> Secret | None:
    value = _get(env, "SQUARE_ACCESS_TOKEN")
    if value is None:
        return None
    if any(c.isspace() for c in value):
        raise SettingsError("SQUARE_ACCESS_TOKEN must not contain white space")
    return Secret(value)


def _secret(env: Mapping[str, str], name: str) -> str | None:
    """A secret from ``NAME`` or from the file ``NAME_FILE`` (one of the two), without surrounding white space."""
    value = _get(env, name)
    path = _get(env, f"{name}_FILE")
    if value is not None and path is not None:
        raise SettingsError(f"set {name} or {name}_FILE, not both")
    if path is not None:
        try:
            value = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SettingsError(f"{name}_FILE {path!r} cannot be read: {type(exc).__name__}") from None
        if not value:
            raise SettingsError(f"{name}_FILE {path!r} is empty")
    return value


def _application_token(env: Mapping[str, str]) -> Secret | None:
    """The application's own personal access token, for the APIs that refuse OAuth tokens (the Events API)."""
    value = _secret(env, "SQUARE_APPLICATION_ACCESS_TOKEN")
    if value is None:
        return None
    if any(c.isspace() for c in value):
        raise SettingsError("SQUARE_APPLICATION_ACCESS_TOKEN must not contain white space")
    return Secret(value)


def _application_secret(env: Mapping[str, str]) -> Secret | None:
    """The application's OAuth client secret (ObtainToken, RevokeToken)."""
    value = _secret(env, "SQUARE_APPLICATION_SECRET")
    if value is not None and any(c.isspace() for c in value):
        raise SettingsError("SQUARE_APPLICATION_SECRET must not contain white space")
    return Secret(value) if value is not None else None


def _encryption_keys(env: Mapping[str, str]) -> tuple[Secret, ...]:
    """Keys that encrypt sellers' tokens at rest, comma-separated: the first encrypts, every one decrypts (rotation).
    Each is a Fernet key (32 url-safe base64-encoded bytes); ``square-mirror sellers new-key`` makes one."""
    value = _secret(env, "SQUARE_MIRROR_ENCRYPTION_KEYS")
    if value is None:
        return ()
    keys = tuple(k.strip() for k in value.split(","))
    for n, key in enumerate(keys, 1):
        try:
            raw = base64.urlsafe_b64decode(key.encode("ascii"))
        except (ValueError, UnicodeEncodeError):
            raw = b""
        if len(raw) != 32:
            raise SettingsError(
                f"SQUARE_MIRROR_ENCRYPTION_KEYS: key {n} is not a Fernet key (32 url-safe base64 bytes)")
    return tuple(Secret(k) for k in keys)


def _tokens_file(env: Mapping[str, str]) -> Path | None:
    value = _get(env, "SQUARE_TOKENS_FILE")
    if value is None:
        return None
    path = Path(value)
    load_tokens_file(path)  # fail at start-up, not at the first API call
    return path


def load_tokens_file(path: Path) -> dict[str, Secret]:
    """Read the merchant_id -> access token map; re-read by the client when the file changes."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SettingsError(f"SQUARE_TOKENS_FILE {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"SQUARE_TOKENS_FILE {str(path)!r} cannot be read: {type(exc).__name__}") from None
    except json.JSONDecodeError as exc:
        raise SettingsError(f"SQUARE_TOKENS_FILE is not valid JSON (line {exc.lineno})") from None
    if not isinstance(data, dict) or not data:
        raise SettingsError("SQUARE_TOKENS_FILE must hold a non-empty JSON object {merchant_id: token}")
    tokens: dict[str, Secret] = {}
    for merchant_id, token in data.items():
        if not _MERCHANT_ID_RE.match(merchant_id):
            raise SettingsError(f"SQUARE_TOKENS_FILE has an invalid merchant ID {merchant_id!r}")
        if not isinstance(token, str) or not token.strip() or any(c.isspace() for c in token.strip()):
            raise SettingsError(f"SQUARE_TOKENS_FILE has an empty or malformed token for {merchant_id}")
        tokens[merchant_id] = Secret(token.strip())
    return tokens


def _merchant_id(env: Mapping[str, str]) -> str | None:
    value = _get(env, "SQUARE_MERCHANT_ID")
    if value is not None and not _MERCHANT_ID_RE.match(value):
        raise SettingsError(f"SQUARE_MERCHANT_ID is malformed: {value!r}")
    return value


def _oauth_redirect_url(env: Mapping[str, str]) -> str | None:
    """Where Square sends a seller back after they approve: the receiver's OAuth callback, exactly as registered
    with the application (Square compares it character by character)."""
    value = _get(env, "SQUARE_OAUTH_REDIRECT_URL")
    if value is not None and not value.startswith(("https://", "http://")):
        raise SettingsError("SQUARE_OAUTH_REDIRECT_URL must be an http(s) URL")
    return value


_APPLICATION_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _application_id(env: Mapping[str, str]) -> str | None:
    """The application's ID (sq0idp-...): custom attribute events may qualify the keys it owns with it."""
    value = _get(env, "SQUARE_APPLICATION_ID")
    if value is not None and not _APPLICATION_ID_RE.match(value):
        raise SettingsError(f"SQUARE_APPLICATION_ID is malformed: {value!r}")
    return value


def _signature_keys(env: Mapping[str, str]) -> tuple[Secret, ...]:
    """The subscription's signature keys, comma-separated (rotation), from the variable or from the file
    ``SQUARE_WEBHOOK_SIGNATURE_KEY_FILE`` names (``square-mirror webhooks subscribe --signature-key-file``)."""
    value = _secret(env, "SQUARE_WEBHOOK_SIGNATURE_KEY")
    if value is None:
        return ()
    keys = tuple(k.strip() for k in value.split(","))
    if any(not k for k in keys):
        raise SettingsError("SQUARE_WEBHOOK_SIGNATURE_KEY has an empty entry (comma-separated keys for rotation)")
    return tuple(Secret(k) for k in keys)


def _notification_url(env: Mapping[str, str]) -> str | None:
    # Not stripped of a trailing slash: the signature covers the URL byte for byte.
    value = env.get("SQUARE_WEBHOOK_NOTIFICATION_URL")
    if value is None or not value.strip():
        return None
    value = value.strip()
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SettingsError(f"SQUARE_WEBHOOK_NOTIFICATION_URL must be an http(s) URL, got {value!r}")
    return value


def _webhook_path(env: Mapping[str, str]) -> str:
    value = _get(env, "WEBHOOK_PATH") or "/square/webhooks"
    if not value.startswith("/"):
        raise SettingsError(f"WEBHOOK_PATH must start with '/', got {value!r}")
    return value


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    value = _get(env, name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number, got {value!r}") from None
    if number <= 0:
        raise SettingsError(f"{name} must be positive, got {number}")
    return number


def _number(env: Mapping[str, str], name: str, default: float, *, minimum: float) -> float:
    value = _get(env, name)
    if value is None:
        return default
    try:
        number = float(value)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {value!r}") from None
    if number != number or number < minimum:
        raise SettingsError(f"{name} must be at least {minimum}, got {value!r}")
    return number


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    """A TCP port; 0 turns the listener off."""
    value = _get(env, name)
    if value is None:
        return default
    try:
        port = int(value)
    except ValueError:
        raise SettingsError(f"{name} must be a port number (0 to disable), got {value!r}") from None
    if not 0 <= port <= 65535:
        raise SettingsError(f"{name} must be between 0 and 65535, got {port}")
    return port


def _log_level(env: Mapping[str, str]) -> str:
    value = (_get(env, "LOG_LEVEL") or "INFO").upper()
    if value not in LOG_LEVELS:
        raise SettingsError(f"LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, got {value!r}")
    return value


def _lane_scheduler(env: Mapping[str, str]) -> str:
    value = (_get(env, "LANE_SCHEDULER") or LANE_SCHEDULER_CRON).lower()
    if value not in LANE_SCHEDULERS:
        raise SettingsError(f"LANE_SCHEDULER must be one of {', '.join(LANE_SCHEDULERS)}, got {value!r}")
    return value


def _share(env: Mapping[str, str], name: str, default: float) -> float:
    """A share of something: above 0, at most 1."""
    share = _number(env, name, default, minimum=0.0)
    if not 0.0 < share <= 1.0:
        raise SettingsError(f"{name} must be above 0 and at most 1, got {share}")
    return share
