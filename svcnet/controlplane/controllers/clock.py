"""Time for controllers: an injectable clock and Kubernetes timestamp text.

Controllers never call `time.time()` directly, so tests can step time without
sleeping (the idea of trio's MockClock and client-go's `clock.Clock`).
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch (wall time: it is compared with API timestamps)."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.time()


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.t = start

    def now(self) -> float:
        return self.t

    def step(self, seconds: float) -> None:
        self.t += seconds


def parse_time(value: object) -> float | None:
    """An RFC 3339 timestamp (`2024-05-01T10:00:00Z`, with or without fraction) as epoch
    seconds; None when absent or unparsable, so one bad field never stops a controller."""
    if not isinstance(value, str) or not value:
        return None
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    # Python before 3.11 accepted at most 6 fraction digits; RFC3339Nano may carry 9.
    head, dot, rest = text.partition(".")
    if dot:
        digits = "".join(c for c in rest if c.isdigit())
        zone = rest[len(digits):]
        text = f"{head}.{digits[:6]}{zone}"
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def format_time(epoch: float, nano: bool = False) -> str:
    """Kubernetes' `metav1.Time` text (`2006-01-02T15:04:05Z`), or RFC3339Nano when `nano`."""
    dt = datetime.fromtimestamp(epoch, tz=timezone.utc)
    if nano and dt.microsecond:
        return dt.strftime("%Y-%m-%dT%H:%M:%S.%f").rstrip("0") + "Z"
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")
