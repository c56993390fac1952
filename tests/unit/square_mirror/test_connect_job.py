"""The connect job's payload (the OAuth redirect's code and state, sealed) and the revocation event's payload."""

from __future__ import annotations

import json

import orjson
import pytest

from square_mirror.constants import OAUTH_REVOKED_EVENT, QUEUED_EVENT_TYPES, SYNCED_EVENT_TYPES
from square_mirror.credentials.cipher import TokenCipher, new_key
from square_mirror.credentials.oauth_state import check_state, new_state, state_expiry, state_hash
from square_mirror.jobs import (
    InvalidEnvelope,
    build_connect_job,
    build_event_job,
    inbox_payload,
    read_connect_job,
    read_event_job,
)
from square_mirror.settings import Secret

KEYS = (Secret(new_key()),)
CODE = "sq0cgb-THE-AUTHORIZATION-CODE"
# FACTS-2 §B.6, verbatim (nanosecond timestamps; data.id is "not applicable").
REVOKED = ('{"created_at": "2020-08-14T15:51:04.246373287Z", "data": {"id": "415641cf-eba2-4dfa-88cc-c4be1301fdc6", '
           '"object": {"revocation": {"revoked_at": "2020-08-14T15:51:00.246373287Z", "revoker_type": "MERCHANT"}}, '
           '"type": "revocation"}, "event_id": "e1d6ae37-5aa9-45a5-b525-b12caf819fdb", "merchant_id": "J9Z30SF99NPFJ",'
           ' "type": "oauth.authorization.revoked"}')


def test_the_connect_payload_holds_the_code_and_the_state_sealed_and_opens_with_the_keys() -> None:
    state = new_state(KEYS)
    payload = build_connect_job(CODE, state, TokenCipher(KEYS), received_at="2025-01-01T00:00:00.000Z")
    text = orjson.dumps(payload).decode()
    assert CODE not in text and state not in text and state.rsplit(".", 1)[1] not in text
    job = read_connect_job(payload, TokenCipher(KEYS))
    assert (job.code.reveal(), job.state.reveal(), job.received_at) == (CODE, state, "2025-01-01T00:00:00.000Z")
    assert CODE not in repr(job) and state not in repr(job)


def test_a_connect_payload_sealed_with_a_dropped_key_or_of_another_version_is_refused() -> None:
    payload = build_connect_job(CODE, new_state(KEYS), TokenCipher(KEYS))
    with pytest.raises(InvalidEnvelope):
        read_connect_job(payload, TokenCipher([Secret(new_key())]))
    with pytest.raises(InvalidEnvelope):
        read_connect_job({**payload, "v": 99}, TokenCipher(KEYS))
    with pytest.raises(InvalidEnvelope):
        read_connect_job({"v": payload["v"]}, TokenCipher(KEYS))


def test_a_rotated_key_still_opens_a_connect_payload_sealed_before_the_rotation() -> None:
    payload = build_connect_job(CODE, new_state(KEYS), TokenCipher(KEYS))
    assert read_connect_job(payload, TokenCipher([Secret(new_key()), *KEYS])).code.reveal() == CODE


@pytest.mark.parametrize("code", ["", "a b", "x" * 600, "sq0cgb-\n", "sq0cgb-é"])
def test_a_code_that_is_not_what_square_sends_is_not_queued(code: str) -> None:
    with pytest.raises(InvalidEnvelope):
        build_connect_job(code, new_state(KEYS), TokenCipher(KEYS))


def test_a_state_is_identified_by_its_hash_and_knows_its_expiry() -> None:
    state = new_state(KEYS, lifetime=60, now=1_000_000)
    assert check_state(KEYS, state, now=1_000_000) and not check_state(KEYS, state, now=1_000_060)
    assert state_expiry(state) == 1_000_060
    assert len(state_hash(state)) == 64 and state.split(".")[2] not in state_hash(state)


def test_the_revocation_event_is_queued_with_who_revoked_and_when() -> None:
    assert OAUTH_REVOKED_EVENT in QUEUED_EVENT_TYPES and OAUTH_REVOKED_EVENT not in SYNCED_EVENT_TYPES
    payload = build_event_job(json.loads(REVOKED))
    job = read_event_job(payload)
    assert (job.type, job.merchant_id, job.customer_id) == (OAUTH_REVOKED_EVENT, "J9Z30SF99NPFJ", None)
    assert job.revocation == ("2020-08-14T15:51:00.246373287Z", "MERCHANT")
    assert inbox_payload(payload) == payload  # who and when: no personal data, kept for a redrive


def test_a_revocation_without_its_revocation_object_is_still_queued() -> None:
    envelope = json.loads(REVOKED)
    envelope["data"] = {"id": "x"}
    assert read_event_job(build_event_job(envelope)).revocation == (None, None)
