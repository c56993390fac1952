"""square-mirror: a live, exact Postgres mirror of Square Customer Directories."""

__version__ = "0.1.0"
