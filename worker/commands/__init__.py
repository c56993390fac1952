"""The worker package's commands: ``worker``, ``backfill``, ``reconcile``, ``redrive`` (see square_mirror/cli.py)."""
