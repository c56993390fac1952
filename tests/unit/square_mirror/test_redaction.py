from __future__ import annotations

from square_mirror.redaction import REDACTED, redact, redact_processor, register_secrets, scrub_text


def test_redact_keeps_non_pii_values() -> None:
    assert redact({"outcome": "stale", "latency_ms": 1.5, "ids": ["A", "B"]}) == {
        "outcome": "stale", "latency_ms": 1.5, "ids": ["A", "B"]
    }
    assert redact({"nested": {"email": "x@y.io"}}) == {"nested": {"email": REDACTED}}


def test_keys_naming_pii_or_secrets_are_masked_whatever_their_case_and_strings_are_scrubbed() -> None:
    register_secrets(["a-registered-secret"])
    try:
        line = redact_processor(None, "info", {
            "Email_Address": "x@y.io", "Authorization": "Bearer abc", "status": 200, "missing": None,
            "detail": "Bearer abc.def for x@y.io with a-registered-secret", "outcome": "enqueued",
        })
    finally:
        register_secrets([])
    assert line == {
        "Email_Address": REDACTED, "Authorization": REDACTED, "status": 200, "missing": None,
        "detail": f"Bearer {REDACTED} for {REDACTED} with {REDACTED}", "outcome": "enqueued",
    }


def test_a_password_in_a_url_is_scrubbed_and_the_rest_of_the_url_kept() -> None:
    assert scrub_text("postgresql://app:pw123456@db/mirror") == f"postgresql://app:{REDACTED}@db/mirror"
