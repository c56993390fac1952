"""square_mirror/db.py: what the pool's settings assume about the way to Postgres."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_the_pools_pgbouncer_guidance_matches_what_it_relies_on() -> None:
    # The pool keeps prepared statements, and runs and migrate hold session-level advisory locks across
    # transactions: both need session pooling behind pgbouncer. The comment beside the setting, and the how-to,
    # must say so (the comment once said the opposite of the setting beside it).
    source = (ROOT / "square_mirror" / "db.py").read_text()
    assert re.search(r"statement_cache_size=[1-9]", source)
    comment = source[: source.index("statement_cache_size=")].rsplit("\n\n", 1)[-1]
    assert "session pooling" in comment and "cannot keep prepared statements" not in comment
    howto = (ROOT / "docs" / "how-to" / "pgbouncer.md").read_text()
    assert "pool_mode = session" in howto
