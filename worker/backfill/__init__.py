"""Backfill: a complete, fast, resumable copy of one seller's directory, with deletes and merges inferred.

``phases`` (the run), ``partition`` (``created_at`` ranges and their splitting), ``progress`` (bar or log lines).
"""

from worker.backfill.phases import BACKFILL, SWEEP, backfill, summarize

__all__ = ["BACKFILL", "SWEEP", "backfill", "summarize"]
