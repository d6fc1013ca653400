"""A board's counters, bumped from any of its threads."""
from __future__ import annotations

import threading

STAT_NAMES = ("triggers", "captures", "commands", "errors", "bytes_sent", "waveforms")


class Stats:
    """Thread-safe counters, read as a dict through `Board.stats`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values = dict.fromkeys(STAT_NAMES, 0)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._values[name] += n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)
