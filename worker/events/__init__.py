"""The per-event pipeline: one webhook (or Events API) event in, committed rows out.

``process`` (the arq job), ``inbox`` (first sight, duplicates, outcomes), ``rules`` (the event gate),
``coalescer`` (concurrent fetches become one BulkRetrieveCustomers) and ``batching`` (the micro-batcher both
the inbox and the coalescer are built on).
"""
