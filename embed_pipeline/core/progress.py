"""Progress reporting for long loops: done/total, rate and ETA, logged at most every few seconds."""

from __future__ import annotations

import logging
import time

_default_logger = logging.getLogger("embed_pipeline")


class Progress:
    """Call ``update(n)`` as work completes; logs ``label: done/total (pct) rate unit/s ETA``."""

    def __init__(
        self,
        label: str,
        total: int,
        logger: logging.Logger | None = None,
        unit: str = "items",
        every_s: float = 5.0,
    ) -> None:
        self.label, self.total, self.unit, self.every_s = label, max(0, int(total)), unit, every_s
        self.log = logger or _default_logger
        self.done = 0
        self.start = self._last = time.perf_counter()

    def update(self, n: int = 1, extra: str = "") -> None:
        self.done += n
        now = time.perf_counter()
        if now - self._last >= self.every_s or self.done >= self.total:
            self._last = now
            self.log.info(self.line(extra))

    @property
    def rate(self) -> float:
        elapsed = time.perf_counter() - self.start
        return self.done / elapsed if elapsed > 0 else 0.0

    def line(self, extra: str = "") -> str:
        rate = self.rate
        remaining = (self.total - self.done) / rate if rate > 0 else float("nan")
        pct = 100.0 * self.done / self.total if self.total else 100.0
        eta = f"{remaining:.0f}s" if remaining == remaining else "?"
        tail = f" {extra}" if extra else ""
        return f"{self.label}: {self.done}/{self.total} ({pct:.0f}%) {rate:.1f} {self.unit}/s ETA {eta}{tail}"

    @property
    def elapsed_s(self) -> float:
        return time.perf_counter() - self.start
