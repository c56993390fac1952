from __future__ import annotations

import json

import pytest

from square_mirror.jobs import InvalidEnvelope, build_event_job, read_event_job
from tests.factories import event_job

CREATED = json.loads(
    '{"created_at": "2022-11-09T21:23:25Z", "data": {"id": "QPTXM8PQNX3Q726ZYHPMNP46XC", "object": {"customer":'
    ' {"birthday": "1962-03-04", "email_address": "jenkins+smorly@squareup.com", "family_name": "Smorly",'
    ' "given_name": "Jenkins", "group_ids": ["JGJCW9S0G68NE.APPOINTMENTS"], "id": "QPTXM8PQNX3Q726ZYHPMNP46XC",'
    ' "phone_number": "+12126668929", "version": 0}}, "type": "customer"}, "event_id":'
    ' "e12b5591-e0b6-4967-810a-307c7efcb1a7", "merchant_id": "G7MMEBVW021Q4", "type": "customer.created"}'
)


def test_job_round_trips_the_fields_the_worker_needs() -> None:
    job = read_event_job(build_event_job(CREATED, received_at="2022-11-09T21:23:26Z"))
    assert job.merchant_id == "G7MMEBVW021Q4"
    assert job.event_id == "e12b5591-e0b6-4967-810a-307c7efcb1a7"
    assert job.customer_id == "QPTXM8PQNX3Q726ZYHPMNP46XC"
    assert job.version == 0
    assert job.deleted is False
    assert job.merge is None


def test_job_payload_carries_no_customer_pii() -> None:
    payload = json.dumps(build_event_job(CREATED))
    for value in ("Jenkins", "Smorly", "jenkins+smorly@squareup.com", "+12126668929", "1962-03-04"):
        assert value not in payload


def test_merge_context_is_carried() -> None:
    job = read_event_job(event_job(event_type="customer.deleted", merge=(["A", "B"], "C")))
    assert job.deleted is True
    assert job.merge == (["A", "B"], "C")


@pytest.mark.parametrize("missing", ["merchant_id", "type", "event_id"])
def test_missing_envelope_field_is_rejected(missing: str) -> None:
    envelope = dict(CREATED)
    del envelope[missing]
    with pytest.raises(InvalidEnvelope, match=missing):
        build_event_job(envelope)


def test_customer_event_without_customer_id_is_rejected() -> None:
    envelope = dict(CREATED, data={"type": "customer"})
    with pytest.raises(InvalidEnvelope, match=r"data\.id"):
        build_event_job(envelope)


def test_other_event_types_need_no_customer() -> None:
    job = read_event_job(build_event_job({"merchant_id": "M", "type": "webhooks.test_notification", "event_id": "E"}))
    assert job.customer_id is None


def test_unknown_payload_version_is_refused() -> None:
    payload = build_event_job(CREATED)
    payload["v"] = 99
    with pytest.raises(InvalidEnvelope, match="version"):
        read_event_job(payload)


def test_payload_keys_are_exactly_the_job_fields() -> None:
    from dataclasses import fields

    from square_mirror.jobs import EventJob

    assert set(build_event_job(CREATED)) == {"v"} | {f.name for f in fields(EventJob)}
