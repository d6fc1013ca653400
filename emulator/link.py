"""The network link of one board: bandwidth pacing and per-command latency.

A real board has one 1 Gbit/s port (less behind a switch, far less over Wi-Fi), shared by
all its connections.  `Link.send` cuts a reply into chunks and books each chunk on the
board's link schedule (bytes * 8 / bandwidth seconds each, back to back), sending it when
its slot ends: a transfer of B bytes takes at least B * 8 / bandwidth seconds, and two
connections of one board share the bandwidth.
"""
from __future__ import annotations

import socket
import threading
import time

CHUNK = 16384


class Link:
    def __init__(self, bandwidth: float | None = None, latency: float = 0.0) -> None:
        self.bandwidth = bandwidth
        self.latency = float(latency)
        self._free_at = 0.0
        self._lock = threading.Lock()

    def _book(self, nbytes: int) -> float:
        """Reserve the link for nbytes; the monotonic time at which they have gone through."""
        with self._lock:
            start = max(time.monotonic(), self._free_at)
            self._free_at = start + nbytes * 8 / self.bandwidth
            return self._free_at

    def delay(self, stop: threading.Event) -> None:
        """The per-command latency (returns early when the emulator stops)."""
        if self.latency > 0:
            stop.wait(self.latency)

    def send(self, sock: socket.socket, data: bytes | memoryview, stop: threading.Event) -> int:
        """Send all of `data` at the link's pace; the number of bytes sent."""
        view = memoryview(data).cast("B")
        if self.bandwidth is None:
            sock.sendall(view)
            return len(view)
        sent = 0
        while sent < len(view) and not stop.is_set():
            chunk = view[sent: sent + CHUNK]
            done = self._book(len(chunk))
            wait = done - time.monotonic()
            if wait > 0 and stop.wait(wait):
                break
            sock.sendall(chunk)
            sent += len(chunk)
        return sent
