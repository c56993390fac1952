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

    everything = {"v"} | {f.name for f in fields(EventJob)}
    assert set(build_event_job(CREATED)) == everything - {"object"}  # customer events carry no object
    assert set(build_event_job(CUSTOM_ATTRIBUTE_UPDATED)) == everything


# Square's example of a custom-attribute event (FACTS.md 5.3): the attribute directly in data.object.
CUSTOM_ATTRIBUTE_UPDATED = {
    "created_at": "2022-04-21T21:40:54Z",
    "data": {"id": "sq0idp-LJ1Kr4Iim0hGDvAwrv8HIB:favorite-drink:CUSTOMER:TNQC0TYTWMRSFFQ157KK4V7MVR",
             "object": {"created_at": "2022-04-21T21:40:54Z", "key": "sq0idp-LJ1Kr4Iim0hGDvAwrv8HIB:favorite-drink",
                        "updated_at": "2022-04-21T21:40:54Z", "value": "Double-shot breve", "version": 1,
                        "visibility": "VISIBILITY_READ_ONLY"},
             "type": "custom_attribute"},
    "event_id": "e26ca6f2-97f8-426a-b4bf-873044617e94", "merchant_id": "DM7VKY8Q63GNP",
    "type": "customer.custom_attribute.owned.updated",
}


@pytest.mark.parametrize("wrapped", [False, True], ids=["example shape", "schema shape"])
def test_custom_attribute_event_carries_its_value_and_customer_in_either_shape(wrapped: bool) -> None:
    event = json.loads(json.dumps(CUSTOM_ATTRIBUTE_UPDATED))
    if wrapped:
        event["data"]["object"] = {"custom_attribute": event["data"]["object"]}
    job = read_event_job(build_event_job(event))
    assert job.customer_id == "TNQC0TYTWMRSFFQ157KK4V7MVR"
    assert job.version == 1 and job.deleted is False
    assert job.object is not None and job.object["value"] == "Double-shot breve"
    assert job.custom_attribute_key == "sq0idp-LJ1Kr4Iim0hGDvAwrv8HIB:favorite-drink"


def test_deleted_custom_attribute_and_definition_events_say_deleted() -> None:
    value = json.loads(json.dumps(CUSTOM_ATTRIBUTE_UPDATED))
    value["type"] = "customer.custom_attribute.visible.deleted"
    assert build_event_job(value)["deleted"] is True
    definition = {"merchant_id": "M", "event_id": "e1", "type": "customer.custom_attribute_definition.public.deleted",
                  "data": {"type": "custom_attribute_definition", "id": "sq0idp-X:shirt-size", "deleted": True,
                           "object": {"key": "sq0idp-X:shirt-size", "version": 3, "schema": {}}}}
    job = read_event_job(build_event_job(definition))
    assert job.deleted and job.customer_id is None and job.object is not None and job.object["version"] == 3


def test_a_value_event_without_its_customer_in_data_id_is_refused() -> None:
    event = json.loads(json.dumps(CUSTOM_ATTRIBUTE_UPDATED))
    event["data"]["id"] = "sq0idp-LJ1Kr4Iim0hGDvAwrv8HIB:favorite-drink"
    with pytest.raises(InvalidEnvelope, match="CUSTOMER"):
        build_event_job(event)


def test_the_inbox_payload_drops_the_object() -> None:
    from square_mirror.jobs import inbox_payload

    payload = build_event_job(CUSTOM_ATTRIBUTE_UPDATED)
    assert "object" not in inbox_payload(payload) and "Double-shot" not in json.dumps(inbox_payload(payload))
    customer = build_event_job(CREATED)
    assert inbox_payload(customer) is customer
