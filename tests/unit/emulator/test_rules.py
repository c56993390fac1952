"""Pure rules: signature test vectors (FACTS §7) and the seeds' fuzzy-matching examples."""

from __future__ import annotations

import pytest

from emulator.search import email_fuzzy, phone_fuzzy, reference_fuzzy
from emulator.validation import e164, normalise_birthday, valid_phone
from emulator.webhooks import sign

VECTOR_1_BODY = ('{"merchant_id":"MLEFBHHSJGVHD","type":"webhooks.test_notification","event_id":'
                 '"ac3ac95b-f97d-458c-a6e6-18981597e05f","created_at":"2022-07-13T20:30:59.037339943Z","data":'
                 '{"type":"webhooks","id":"bc368e64-01aa-407e-b46e-3231809b1129"}}')


def test_official_signature_vector_1_reproduces() -> None:
    assert sign("Ibxx_5AKakO-3qeNVR61Dw", "https://webhook.site/679a4f3a-dcfa-49ee-bac5-9d0edad886b9",
                VECTOR_1_BODY.encode()) == "GF4YkrJgGBDZ9NIYbNXBnMzqb2HoL4RW/S6vkZ9/2N4="


def test_official_signature_vector_2_reproduces() -> None:
    assert sign("signature-key", "https://webhook.site/webhooks",
                b'{"data":{"type":"webhooks","id":">id<"}}') == "Cxt7+aTi4rKgcA0bC4g9EHdVtLSDWdqccmL5MvihU4U="


def test_sdk_helper_accepts_our_signature_and_rejects_wrong_url() -> None:
    from square.utils.webhooks_helper import verify_signature

    sig = sign("k", "https://x.test/hook", b'{"a":1}')
    assert verify_signature(request_body='{"a":1}', signature_header=sig, signature_key="k",
                            notification_url="https://x.test/hook")
    assert not verify_signature(request_body='{"a":1}', signature_header=sig, signature_key="k",
                                notification_url="https://x.test/hook/")


@pytest.mark.parametrize(("email", "expected"), [
    ("steven.johnson@gmail.com", True), ("Steven_Smith@GMAIL.com", True), ("steve@gmail.com", False),
    ("steven@yahoo.com", False)])
def test_email_fuzzy_steven_gmail(email: str, expected: bool) -> None:
    assert email_fuzzy(email, "Steven gmail") is expected


@pytest.mark.parametrize(("phone", "q415", "q415_123"), [
    ("+1-415-212-1200", True, False), ("+1-212-415-1234", True, True), ("+1 (551) 234-1567", True, True),
    ("+1-212-555-1200", False, False)])
def test_phone_fuzzy_seed_examples(phone: str, q415: bool, q415_123: bool) -> None:
    assert phone_fuzzy(phone, "415") is q415
    assert phone_fuzzy(phone, "415 123") is q415_123


@pytest.mark.parametrize(("ref", "expected"), [
    ("NYC_M_35_JOHNSON", True), ("NYC_27_MURRAY", True), ("SF_M_1", False), ("NYC_27_SMITH", False)])
def test_reference_fuzzy_nyc_m(ref: str, expected: bool) -> None:
    assert reference_fuzzy(ref, "NYC M") is expected


def test_phone_validation_and_e164() -> None:
    assert valid_phone("+1 (206) 222-3333") and not valid_phone("12345") and not valid_phone("abc1234567")
    assert e164("+1 (206) 222-3333") == "+12062223333" == e164("(206) 222-3333")


@pytest.mark.parametrize(("given", "out"), [("2001-04-20", "2001-04-20"), ("04-20", "0000-04-20"),
                                             ("0000-02-29", "0000-02-29"), ("2001-02-29", None), ("13-01", None),
                                             ("2001/04/20", None)])
def test_birthday_formats(given: str, out: str | None) -> None:
    assert normalise_birthday(given) == out


def test_seeded_profiles_keep_square_field_order_and_are_deterministic() -> None:
    import random

    from emulator.config import Knobs
    from emulator.records import FIELD_ORDER
    from emulator.seeding import seed_merchant
    from emulator.state import MerchantState

    def build() -> MerchantState:
        st = MerchantState("M", "t", random.Random(1), Knobs(), lambda m, e: None)
        seed_merchant(st, customers=300, instant_profiles=5, seed=9)
        return st

    a, b = build(), build()
    assert list(a.customers) == list(b.customers)
    for rec in a.customers.values():
        keys = list(rec.doc)
        assert keys == [k for k in FIELD_ORDER if k in keys]
    assert sum(1 for r in a.customers.values() if not r.public) == 5
