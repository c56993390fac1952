"""The bytes the receiver writes are the ones arq's Worker reads for ``process_event(payload)``."""

from __future__ import annotations

from arq.jobs import deserialize_job, deserialize_job_raw, serialize_job

from square_mirror.constants import PROCESS_EVENT_JOB
from square_mirror.jobs import read_event_job
from square_mirror.queue import deserialize_job as our_deserializer
from square_mirror.queue import serialize_job as our_serializer
from tests.factories import event_job
from webhooks.enqueue import encode_job


def test_encoded_jobs_are_json_and_decode_to_the_payload() -> None:
    payload = event_job(merchant_id="M1", event_type="customer.deleted", event_id="e1", customer_id="C1",
                        received_at="2024-01-01T00:00:00.000Z")
    data = encode_job(payload, 1_700_000_000_123)
    assert data.startswith(b"{")  # JSON, never pickle
    function, args, kwargs, job_try, enqueue_time_ms = deserialize_job_raw(data, deserializer=our_deserializer)
    assert (function, kwargs, job_try, enqueue_time_ms) == (PROCESS_EVENT_JOB, {}, None, 1_700_000_000_123)
    assert list(args) == [payload]
    assert read_event_job(args[0]).deleted is True
    assert deserialize_job(data, deserializer=our_deserializer).function == PROCESS_EVENT_JOB


def test_encoded_jobs_are_byte_for_byte_what_arqs_enqueue_job_writes() -> None:
    payload = event_job(merchant_id="M1", event_id="e2", customer_id="C2", received_at="2024-01-01T00:00:00.000Z")
    arqs = serialize_job(PROCESS_EVENT_JOB, (payload,), {}, None, 1_700_000_000_456, serializer=our_serializer)
    assert encode_job(payload, 1_700_000_000_456) == arqs
