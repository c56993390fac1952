from __future__ import annotations

import json
from pathlib import Path

import pytest

from square_mirror.constants import DEFAULT_SQUARE_BASE_URL, DEFAULT_SQUARE_VERSION
from square_mirror.settings import Secret, Settings, SettingsError


def test_defaults_apply_when_environment_is_empty() -> None:
    settings = Settings.from_env({})
    assert settings.square_base_url == DEFAULT_SQUARE_BASE_URL
    assert settings.square_version == DEFAULT_SQUARE_VERSION
    assert settings.database_url is None
    assert settings.log_level == "INFO"


def test_require_database_url_names_the_variable() -> None:
    with pytest.raises(SettingsError, match="DATABASE_URL"):
        Settings.from_env({}).require_database_url()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DATABASE_URL", "mysql://x@y/z"),
        ("REDIS_URL", "http://localhost"),
        ("REDIS_URL", "unix:///var/run/redis/redis.sock"),  # would connect to 127.0.0.1 instead
        ("SQUARE_BASE_URL", "ftp://connect.squareup.com"),
        ("SQUARE_BASE_URL", "https://connect.squareup.com/v2"),
        ("SQUARE_VERSION", "2025-8-20"),
        ("SQUARE_WEBHOOK_NOTIFICATION_URL", "not a url"),
        ("SQUARE_WEBHOOK_SIGNATURE_KEY", "key1,,key2"),
        ("LOG_LEVEL", "CHATTY"),
        ("WEBHOOK_MAX_BODY_BYTES", "-5"),
        ("SQUARE_ACCESS_TOKEN", "two words"),
    ],
)
def test_malformed_value_fails_with_the_variable_name(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


def test_signature_keys_are_split_for_rotation() -> None:
    settings = Settings.from_env({"SQUARE_WEBHOOK_SIGNATURE_KEY": "old-key-1, new-key-2"})
    assert [k.reveal() for k in settings.webhook_signature_keys] == ["old-key-1", "new-key-2"]


def test_notification_url_keeps_its_trailing_slash_because_the_signature_covers_it() -> None:
    settings = Settings.from_env({"SQUARE_WEBHOOK_NOTIFICATION_URL": "https://example.com/hook/"})
    assert settings.webhook_notification_url == "https://example.com/hook/"


def test_secrets_never_appear_in_repr() -> None:
    settings = Settings.from_env(
        {
            "DATABASE_URL": "postgresql://app:hunter2pw@db:5432/mirror",
            "SQUARE_ACCESS_TOKEN": "EAAAsupersecrettoken",
            "SQUARE_WEBHOOK_SIGNATURE_KEY": "sigkey-abcdef",
        }
    )
    text = repr(settings) + str(settings)
    for secret in ("hunter2pw", "EAAAsupersecrettoken", "sigkey-abcdef"):
        assert secret not in text
    assert set(settings.secrets()) >= {"EAAAsupersecrettoken", "sigkey-abcdef"}


def test_secret_compares_by_value_but_hides_it() -> None:
    assert Secret("abc") == Secret("abc")
    assert "abc" not in repr(Secret("abc"))


def test_tokens_file_is_validated_at_start_up(tmp_path: Path) -> None:
    good = tmp_path / "tokens.json"
    good.write_text(json.dumps({"MERCHANT1": "tok-1", "MERCHANT2": "tok-2"}))
    assert Settings.from_env({"SQUARE_TOKENS_FILE": str(good)}).square_tokens_file == good

    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SettingsError, match="SQUARE_TOKENS_FILE"):
        Settings.from_env({"SQUARE_TOKENS_FILE": str(bad)})
    with pytest.raises(SettingsError, match="SQUARE_TOKENS_FILE"):
        Settings.from_env({"SQUARE_TOKENS_FILE": str(tmp_path / "missing.json")})
    empty_token = tmp_path / "empty.json"
    empty_token.write_text(json.dumps({"MERCHANT1": ""}))
    with pytest.raises(SettingsError, match="MERCHANT1"):
        Settings.from_env({"SQUARE_TOKENS_FILE": str(empty_token)})


def test_tokens_file_errors_never_echo_a_token(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"bad merchant id!": "EAAAleakme"}))
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"SQUARE_TOKENS_FILE": str(path)})
    assert "EAAAleakme" not in str(info.value)


@pytest.mark.parametrize(
    ("name", "value"),
    [("SQUARE_MAX_REQUESTS_PER_SECOND", "-1"), ("SQUARE_MAX_REQUESTS_PER_SECOND", "nan"), ("WORKER_POLL_DELAY", "x"),
     ("WORKER_METRICS_PORT", "70000"), ("BACKFILL_CONCURRENCY", "0")],
)
def test_tuning_values_are_validated(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


def test_zero_disables_rate_limit_and_metrics_port() -> None:
    settings = Settings.from_env({"SQUARE_MAX_REQUESTS_PER_SECOND": "0", "WORKER_METRICS_PORT": "0"})
    assert settings.square_max_requests_per_second == 0
    assert settings.worker_metrics_port == 0


def test_application_access_token_comes_from_the_environment_or_a_file_and_is_a_secret(tmp_path: Path) -> None:
    path = tmp_path / "application-token"
    path.write_text("EAAAapplicationtoken\n")
    from_file = Settings.from_env({"SQUARE_APPLICATION_ACCESS_TOKEN_FILE": str(path)})
    from_env = Settings.from_env({"SQUARE_APPLICATION_ACCESS_TOKEN": "EAAAapplicationtoken"})
    assert from_file.square_application_access_token == from_env.square_application_access_token
    assert "EAAAapplicationtoken" in from_file.secrets() and "EAAAapplicationtoken" not in repr(from_file)


@pytest.mark.parametrize("problem", ["both", "missing", "empty"])
def test_application_access_token_misconfiguration_names_the_variable(tmp_path: Path, problem: str) -> None:
    path = tmp_path / "token"
    path.write_text("" if problem == "empty" else "EAAAx")
    env = {"SQUARE_APPLICATION_ACCESS_TOKEN_FILE": str(path if problem != "missing" else tmp_path / "nope")}
    if problem == "both":
        env["SQUARE_APPLICATION_ACCESS_TOKEN"] = "EAAAy"
    with pytest.raises(SettingsError, match="SQUARE_APPLICATION_ACCESS_TOKEN"):
        Settings.from_env(env)


def test_worker_settings_defaults_and_overrides() -> None:
    defaults = Settings.from_env({})
    assert (defaults.worker_job_timeout_seconds, defaults.worker_max_tries) == (30.0, 40)
    assert defaults.worker_fetch_window_ms == 5.0 and defaults.worker_shutdown_grace_seconds == 20
    custom = Settings.from_env({"WORKER_JOB_TIMEOUT_SECONDS": "20", "WORKER_MAX_TRIES": "10",
                                "WORKER_RETRY_MAX_DELAY_SECONDS": "60", "WORKER_UNAUTHORIZED_RETRY_SECONDS": "30",
                                "WORKER_SHUTDOWN_GRACE_SECONDS": "5", "WORKER_FETCH_WINDOW_MS": "0",
                                "WORKER_DB_POOL_SIZE": "4"})
    assert (custom.worker_job_timeout_seconds, custom.worker_max_tries, custom.worker_retry_max_delay_seconds,
            custom.worker_unauthorized_retry_seconds, custom.worker_shutdown_grace_seconds,
            custom.worker_fetch_window_ms, custom.worker_db_pool_size) == (20.0, 10, 60.0, 30.0, 5, 0.0, 4)


@pytest.mark.parametrize(("name", "value"), [("WORKER_JOB_TIMEOUT_SECONDS", "1"), ("WORKER_MAX_TRIES", "0"),
                                             ("WORKER_FETCH_WINDOW_MS", "-1"), ("WORKER_DB_POOL_SIZE", "x")])
def test_bad_worker_settings_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})
