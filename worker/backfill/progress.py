"""Progress of a long run: a live bar on a terminal, periodic structured log lines otherwise.

On a TTY the bar uses ``rich`` (a dependency; without it, a plain one-line ``\\r`` bar on stderr). Off a TTY
(containers, cron, arq) a JSON log line is written every ``log_every`` seconds with the counts, the rate and
the ETA.
"""

from __future__ import annotations

import importlib
import sys
import time
from typing import Any, Protocol, TextIO

from square_mirror.logs import get_logger

log = get_logger(__name__)


class Reporter(Protocol):
    def update(self, done: int, total: int | None, fields: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class Progress:
    """Counts customers processed by one run and reports rate and ETA."""

    def __init__(self, *, label: str, merchant_id: str, total: int | None = None, reporter: Reporter | None = None,
                 log_every: float = 10.0) -> None:
        self.label = label
        self.merchant_id = merchant_id
        self.total = total
        self.done = 0
        self.started = time.monotonic()
        self._reporter = reporter
        self._log_every = log_every
        self._last_log = self.started
        self.fields: dict[str, Any] = {}

    @property
    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    @property
    def eta_seconds(self) -> float | None:
        if self.total is None or self.rate <= 0:
            return None
        return max(0.0, (self.total - self.done) / self.rate)

    def set_total(self, total: int | None) -> None:
        self.total = total
        self._render()

    def advance(self, n: int, **fields: Any) -> None:
        self.done += n
        self.fields.update(fields)
        self._render()

    def note(self, **fields: Any) -> None:
        """Update the figures shown beside the count (e.g. a phase's requests) without advancing it."""
        self.fields.update(fields)
        self._render()

    def _render(self) -> None:
        if self._reporter is not None:
            self._reporter.update(self.done, self.total, self.fields)
            return
        now = time.monotonic()
        if now - self._last_log >= self._log_every:
            self._last_log = now
            self.log_line("progress")

    def log_line(self, event: str) -> None:
        eta = self.eta_seconds
        log.info(event, merchant_id=self.merchant_id, run=self.label, done=self.done, total=self.total,
                 rate_per_s=round(self.rate, 1), eta_s=None if eta is None else round(eta, 1), **self.fields)

    def close(self) -> None:
        if self._reporter is not None:
            self._reporter.close()
            self._reporter = None


class _PlainBar:
    def __init__(self, label: str, stream: TextIO) -> None:
        self.label = label
        self.stream = stream
        self.started = time.monotonic()
        self._last = 0.0

    def update(self, done: int, total: int | None, fields: dict[str, Any]) -> None:
        now = time.monotonic()
        if now - self._last < 0.2:
            return
        self._last = now
        elapsed = max(now - self.started, 1e-9)
        rate = done / elapsed
        if total:
            frac = min(1.0, done / total)
            bar = "#" * int(frac * 30)
            eta = f"{(total - done) / rate:,.0f}s" if rate > 0 else "?"
            text = f"{self.label} [{bar:<30}] {done}/{total} {rate:,.0f}/s ETA {eta}"
        else:
            text = f"{self.label} {done} {rate:,.0f}/s"
        extra = " ".join(f"{k}={v}" for k, v in fields.items())
        self.stream.write("\r" + (text + " " + extra)[:150].ljust(150))
        self.stream.flush()

    def close(self) -> None:
        self.stream.write("\n")
        self.stream.flush()


class _RichBar:  # pragma: no cover - needs a terminal
    def __init__(self, label: str, rich_progress: Any) -> None:
        columns = rich_progress
        self._progress = columns.Progress(
            columns.TextColumn("{task.description}"), columns.BarColumn(), columns.MofNCompleteColumn(),
            columns.TextColumn("{task.fields[rate]}/s"), columns.TimeRemainingColumn(),
            columns.TextColumn("{task.fields[extra]}"), transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task(label, total=None, rate="0", extra="")
        self._started = time.monotonic()

    def update(self, done: int, total: int | None, fields: dict[str, Any]) -> None:
        rate = done / max(time.monotonic() - self._started, 1e-9)
        self._progress.update(self._task, completed=done, total=total, rate=f"{rate:,.0f}",
                              extra=" ".join(f"{k}={v}" for k, v in fields.items()))

    def close(self) -> None:
        self._progress.stop()


def terminal_reporter(label: str, stream: TextIO | None = None) -> Reporter | None:
    """A live bar when ``stream`` (stderr) is a terminal, else None (log lines are used instead)."""
    stream = stream or sys.stderr
    if not stream.isatty():
        return None
    try:
        module = importlib.import_module("rich.progress")
    except ImportError:  # pragma: no cover - rich is a dependency; a broken install still gets a bar
        return _PlainBar(label, stream)
    return _RichBar(label, module)
