from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from square_mirror.settings import Secret, SettingsError
from square_mirror.tokens import NoToken, TokenSource


def _write(path: Path, tokens: dict[str, str], bump: float) -> None:
    path.write_text(json.dumps(tokens))
    stamp = time.time() + bump
    os.utime(path, (stamp, stamp))


def test_tokens_file_is_reread_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    _write(path, {"M1": "old-token"}, 0)
    source = TokenSource(path=path)
    assert source.token_for("M1") == "old-token"
    _write(path, {"M1": "new-token", "M2": "t2"}, 5)
    source._checked = 0  # skip the once-a-second throttle
    assert source.token_for("M1") == "new-token"
    assert source.merchants() == ["M1", "M2"]


def test_a_broken_file_keeps_the_last_good_tokens(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    _write(path, {"M1": "good"}, 0)
    source = TokenSource(path=path)
    path.write_text("{broken")
    os.utime(path, (time.time() + 5, time.time() + 5))
    source._checked = 0
    assert source.token_for("M1") == "good"


def test_unknown_merchant_without_single_token_has_no_token(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    _write(path, {"M1": "good"}, 0)
    with pytest.raises(NoToken):
        TokenSource(path=path).token_for("M2")


def test_single_token_serves_any_merchant() -> None:
    source = TokenSource(single=Secret("only-one"), single_merchant="M9")
    assert source.token_for("WHOEVER") == "only-one"
    assert source.merchants() == ["M9"]


def test_missing_file_fails_at_start(tmp_path: Path) -> None:
    with pytest.raises(SettingsError):
        TokenSource(path=tmp_path / "nope.json")
