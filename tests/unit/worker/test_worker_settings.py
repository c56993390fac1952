from __future__ import annotations

import pytest

from square_mirror.settings import Settings, SettingsError


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
