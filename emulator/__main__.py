"""``python -m emulator``: same as ``square-mirror emulator``."""

from .cli import main

raise SystemExit(main())
