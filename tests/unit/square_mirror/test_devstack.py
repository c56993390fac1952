"""The dev stack's emulator command line survives any random signature key."""

from __future__ import annotations

import pytest

from emulator.cli import build_parser
from square_mirror.devstack import emulator_args


@pytest.mark.parametrize("key", ["-starts-with-a-dash", "--two", "plain_Key-123"])
def test_the_signature_key_reaches_the_emulator_whatever_its_first_character(key: str) -> None:
    argv = emulator_args(8123, 7, 120, "http://127.0.0.1:9/square/webhooks", key)
    assert argv[0] == "emulator"
    parsed = build_parser().parse_args(argv[1:])
    assert (parsed.signature_key, parsed.port, parsed.customers) == (key, 8123, 120)
