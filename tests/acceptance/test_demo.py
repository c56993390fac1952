"""The README's first Quickstart command, end to end, and the README's SQL against what it leaves behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "REDIS_URL") and not k.startswith("SQUARE_")}
    env.update(extra)
    return env


def _readme_sql() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    statements: list[str] = []
    for block in re.findall(r"```sql\n(.*?)```", readme, flags=re.DOTALL):
        text = "\n".join(line for line in block.splitlines() if not line.strip().startswith("--"))
        statements.extend(s.strip() for s in text.split(";") if s.strip())
    return statements


@pytest.mark.slow
async def test_demo_converges_and_every_readme_query_runs_on_what_it_filled(db_dsn: str, redis_url: str) -> None:
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
        statements = _readme_sql()
        assert len(statements) >= 6
        for statement in statements:
            if statement.upper().startswith(("CREATE ROLE", "GRANT")):
                continue  # role management examples, not analytics queries
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
