"""A Square emulator (Customers, Customer Groups/Segments, Events, webhooks) for square-mirror tests."""

from .app import create_app
from .config import EmulatorConfig, Knobs, SubscriptionSpec

__all__ = ["EmulatorConfig", "Knobs", "SubscriptionSpec", "create_app"]
