"""The webhook receiver: verifies Square's signed deliveries and queues customer events for the worker.

Square retries anything that is not a 2xx within 10 s and disables a subscription after weeks of failures,
so the receiver answers 200 only once an event is safely in Redis, and 503 (well within 10 s) otherwise.
"""
