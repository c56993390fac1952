"""The signature check against Square's official vectors and against the official SDK helper."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from square.utils.webhooks_helper import verify_signature as sdk_verify_signature

from tests.integration.webhooks.support import CUSTOMER_CREATED
from webhooks.signature import compute_signature, verify_signature

# FACTS.md §7, from the SDK's own tests.
V1_KEY = "Ibxx_5AKakO-3qeNVR61Dw"
V1_URL = "https://webhook.site/679a4f3a-dcfa-49ee-bac5-9d0edad886b9"
V1_BODY = (
    '{"merchant_id":"MLEFBHHSJGVHD","type":"webhooks.test_notification","event_id":'
    '"ac3ac95b-f97d-458c-a6e6-18981597e05f","created_at":"2022-07-13T20:30:59.037339943Z","data":{"type":"webhooks",'
    '"id":"bc368e64-01aa-407e-b46e-3231809b1129"}}'
)
V1_SIGNATURE = "GF4YkrJgGBDZ9NIYbNXBnMzqb2HoL4RW/S6vkZ9/2N4="
V2_KEY = "signature-key"
V2_URL = "https://webhook.site/webhooks"
V2_BODY = '{"data":{"type":"webhooks","id":">id<"}}'
V2_SIGNATURE = "Cxt7+aTi4rKgcA0bC4g9EHdVtLSDWdqccmL5MvihU4U="


@pytest.mark.parametrize(
    ("key", "url", "body", "signature"),
    [(V1_KEY, V1_URL, V1_BODY, V1_SIGNATURE), (V2_KEY, V2_URL, V2_BODY, V2_SIGNATURE)],
    ids=["vector-1", "vector-2"],
)
def test_official_vectors_verify(key: str, url: str, body: str, signature: str) -> None:
    assert verify_signature([key], url, body.encode(), signature)
    assert compute_signature(key, url, body.encode()) == signature
    assert sdk_verify_signature(request_body=body, signature_header=signature, signature_key=key, notification_url=url)


@pytest.mark.parametrize(
    ("key", "url", "body", "signature"),
    [
        (V1_KEY, "https://webhook.site/79a4f3a-dcfa-49ee-bac5-9d0edad886b9", V1_BODY, V1_SIGNATURE),  # wrong URL
        ("MCmhFRxGX82xMwg5FsaoQA", V1_URL, V1_BODY, V1_SIGNATURE),  # wrong key
        (V1_KEY, V1_URL, V1_BODY, "1z2n3DEJJiUPKcPzQo1ftvbxGdw="),  # bogus header
        (V1_KEY, V1_URL, V1_BODY.replace("20:30:59", "20:31:59"), V1_SIGNATURE),  # changed created_at
        (V1_KEY, V1_URL, json.dumps(json.loads(V1_BODY), indent=2), V1_SIGNATURE),  # re-serialised body
        (V1_KEY, V1_URL + "/", V1_BODY, V1_SIGNATURE),  # trailing slash on the URL
        (V1_KEY, V1_URL, V1_BODY, V1_SIGNATURE.lower()),  # header case changed
        (V1_KEY, V1_URL, V1_BODY, V1_SIGNATURE + " "),  # header with trailing space
        (V1_KEY, V1_URL, V1_BODY, ""),  # empty header
    ],
    ids=["url", "key", "header", "body", "pretty-body", "trailing-slash", "header-case", "header-space", "empty"],
)
def test_official_negative_cases_and_tampering_are_rejected(key: str, url: str, body: str, signature: str) -> None:
    assert not verify_signature([key], url, body.encode(), signature)
    assert not sdk_verify_signature(
        request_body=body, signature_header=signature, signature_key=key, notification_url=url
    )


def test_missing_header_empty_body_and_no_keys_are_rejected() -> None:
    assert not verify_signature([V1_KEY], V1_URL, V1_BODY.encode(), None)
    assert not verify_signature([V1_KEY], V1_URL, b"", compute_signature(V1_KEY, V1_URL, b""))
    assert not verify_signature([], V1_URL, V1_BODY.encode(), V1_SIGNATURE)
    assert not verify_signature([""], V1_URL, V1_BODY.encode(), V1_SIGNATURE)


def test_any_configured_key_is_accepted_during_rotation() -> None:
    assert verify_signature(["old-key", V1_KEY], V1_URL, V1_BODY.encode(), V1_SIGNATURE)
    assert verify_signature([V1_KEY, "new-key"], V1_URL, V1_BODY.encode(), V1_SIGNATURE)
    assert not verify_signature(["old-key", "new-key"], V1_URL, V1_BODY.encode(), V1_SIGNATURE)


def test_a_header_with_non_utf8_characters_is_rejected_not_an_error() -> None:
    assert not verify_signature([V1_KEY], V1_URL, V1_BODY.encode(), "\udcff" + V1_SIGNATURE)
    assert not verify_signature([V1_KEY], V1_URL, V1_BODY.encode(), "é" * 44)


def test_derived_customer_created_vector_from_facts() -> None:
    compact = json.dumps(json.loads(CUSTOMER_CREATED), separators=(",", ":")).encode()
    signature = "HYH5fo8OEQQcs2jFDLWBS89fK2edYvBEZ/9jXzVP5u4="
    assert verify_signature(["test-signature-key"], "https://emulator.local/square/webhooks", compact, signature)


def test_the_signature_covers_raw_bytes_including_non_utf8_ones() -> None:
    body = b'{"a":"\xff\xfe"}'
    signature = base64.b64encode(hmac.new(b"k" * 8, b"https://x.test/h" + body, hashlib.sha256).digest()).decode()
    assert verify_signature(["k" * 8], "https://x.test/h", body, signature)
    assert not verify_signature(["k" * 8], "https://x.test/h", body + b" ", signature)


def _reference_signature(key: str, url: str, body: str) -> str:
    """An independent statement of the algorithm in FACTS.md §7 (not the code under test)."""
    digest = hmac.new(key.encode(), (url + body).encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


_texts = st.text(min_size=1, max_size=200)


@settings(max_examples=300, deadline=None)
@given(key=_texts, url=_texts, body=_texts, noise=st.text(max_size=60), flip=st.integers(min_value=0, max_value=43))
def test_agrees_with_the_official_sdk_helper(key: str, url: str, body: str, noise: str, flip: int) -> None:
    good = _reference_signature(key, url, body)
    tampered = good[:flip] + ("A" if good[flip] != "A" else "B") + good[flip + 1 :]
    for header in (good, tampered, noise, good + noise):
        ours = verify_signature([key], url, body.encode(), header)
        sdk = sdk_verify_signature(request_body=body, signature_header=header, signature_key=key, notification_url=url)
        assert ours == sdk, header
    assert verify_signature([key], url, body.encode(), good)


@settings(max_examples=200, deadline=None)
@given(key=_texts, other_key=_texts, url=_texts, body=_texts, suffix=st.text(min_size=1, max_size=5))
def test_any_change_to_body_url_or_key_is_rejected(
    key: str, other_key: str, url: str, body: str, suffix: str
) -> None:
    signature = compute_signature(key, url, body.encode())
    assert verify_signature([key], url, body.encode(), signature)
    assert not verify_signature([key], url, (body + suffix).encode(), signature)
    assert not verify_signature([key], url + suffix, body.encode(), signature)
    if other_key != key:
        assert not verify_signature([other_key], url, body.encode(), signature)
