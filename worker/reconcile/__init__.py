"""Reconcile: what heals the mirror when webhooks cannot (or did not) tell.

``lanes`` (the lanes and ``run_lane``) and ``jobs`` (their arq jobs and cron entries).
"""

from worker.reconcile.lanes import LANES, run_lane

__all__ = ["LANES", "run_lane"]
