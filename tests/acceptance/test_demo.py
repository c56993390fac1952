"""The README's first Quickstart command, end to end, and every SQL example of the docs (the tutorial, the schema
reference, the how-to guides) against what it leaves behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import pytest

from tests.docs_examples import WITH_SQL, is_role_statement, sql_blocks


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "REDIS_URL") and not k.startswith("SQUARE_")}
    env.update(extra)
    return env


def _docs_sql() -> list[str]:
    return [statement for path in WITH_SQL for block in sql_blocks(path) for statement in block]


@pytest.mark.slow
async def test_demo_converges_and_every_docs_query_runs_on_what_it_filled(db_dsn: str, redis_url: str) -> None:
    result = subprocess.run([sys.executable, "-m", "square_mirror", "demo", "--customers", "120"],
                            env=_env(DATABASE_URL=db_dsn, REDIS_URL=redis_url), capture_output=True, text=True,
                            timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "the mirror equals the emulator's truth" in result.stdout
    for step in ("backfill", "a group change", "a delete", "a merge", "a segment change", "duplicated"):
        assert step in result.stdout
    conn = await asyncpg.connect(db_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM square.customer_merges") >= 2
        assert await conn.fetchval("SELECT count(*) FROM square.customer_segment_memberships"
                                   " WHERE segment_name = 'Lunch regulars'") == 1
        statements = _docs_sql()
        assert len(statements) >= 20
        for statement in statements:
            if is_role_statement(statement):
                continue  # role management examples (tests/integration/test_docs.py runs them, rolled back)
            await conn.fetch(statement)
    finally:
        await conn.close()


@pytest.mark.slow
def test_keep_running_stops_everything_it_started_on_ctrl_c() -> None:
    # A short private TMPDIR: Postgres' unix socket path must stay under ~100 bytes.
    tmp_path = Path(tempfile.mkdtemp(prefix="sqmd-"))
    proc = subprocess.Popen([sys.executable, "-m", "square_mirror", "demo", "--customers", "50", "--keep-running"],
                            env=_env(TMPDIR=str(tmp_path)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    assert proc.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if "Ctrl-C stops it all" in line:
            break
    assert any("Ctrl-C stops it all" in line for line in seen), "".join(seen)[-3000:]
    for _ in range(5):  # the connection details follow
        seen.append(proc.stdout.readline())
    assert any("psql '" in line for line in seen)
    proc.send_signal(signal.SIGINT)
    remaining, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, remaining[-2000:]
    for pattern in (str(tmp_path), "-m square_mirror (emulator|webhooks|worker)"):
        leftovers = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout
        assert leftovers.strip() == "", f"processes still running: {pattern}"
    assert list(tmp_path.iterdir()) == [], "temporary directories left behind"
    tmp_path.rmdir()
