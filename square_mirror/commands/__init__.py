"""Command modules for the `square-mirror` CLI that belong to no single room."""
