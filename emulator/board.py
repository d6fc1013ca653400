"""One emulated board: its inputs, its acquisition state, its link, its counters and fault hooks.

The SCPI acquisition (`Acquisition`) and the MCPHA oscilloscope (`emulator.mcpha.Scope`)
are separate state machines over the same inputs: on a real board only one of the two
servers runs at a time (they load different FPGA images), the emulator offers both.
All connections of a board share its state; `lock` serialises commands as the real
server does (it runs one command at a time).  With a common trigger the acquisition also
belongs to the emulator's `TriggerGroup`, whose lock is only ever taken inside this one.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from typing import Protocol

import numpy as np

from emulator.acquisition import Acquisition
from emulator.link import Link
from emulator.mcpha import Scope
from emulator.signal import BoardSignal
from emulator.stats import Stats
from emulator.timeline import Clock
from emulator.triggergroup import TriggerGroup

CORRUPTIONS = ("bad_header", "truncated", "short")


class Service(Protocol):
    def drop_connections(self) -> None: ...


class Board:
    def __init__(self, name: str, index: int, signal: BoardSignal, clock: Clock, link: Link,
                 group: TriggerGroup | None = None) -> None:
        self.name = name
        self.index = index
        self.signal = signal
        self.clock = clock
        self.link = link
        self.lock = threading.RLock()
        self._stats = Stats()
        self.acq = Acquisition(signal, clock, self._stats, group, index)   # group: common trigger
        self.scope = Scope(signal, clock, self._stats)
        self.ret_on_error = False          # RP:RET_ON_ERROR is global in the real server
        self._hang_until = 0.0
        self.connections = 0         # SCPI connections accepted so far (the newest owns the board)
        self._conn_lock = threading.Lock()
        self._corrupt: deque[str] = deque()
        self._services: list[Service] = []

    # ---- counters ------------------------------------------------------------------
    @property
    def stats(self) -> dict[str, int]:
        """triggers, captures, commands, errors, bytes_sent, waveforms."""
        return self._stats.snapshot()

    def count(self, name: str, n: int = 1) -> None:
        self._stats.add(name, n)

    # ---- in-process views ------------------------------------------------------------
    def events(self, t0_s: float, t1_s: float) -> tuple[np.ndarray, np.ndarray]:
        """The pulses this board's inputs see between two emulator times (s): (times_ns, volts)."""
        return self.signal.timeline.pulses(t0_s * 1e9, t1_s * 1e9)

    def last_trigger_ns(self) -> float | None:
        """Emulator time of the last SCPI trigger (ns), None before the first."""
        with self.lock:
            return self.acq.trigger_time_ns()

    # ---- fault hooks -----------------------------------------------------------------
    def hang(self, seconds: float) -> None:
        """Stop answering for `seconds`: connections read nothing and reply nothing."""
        self._hang_until = max(self._hang_until, time.monotonic() + float(seconds))

    def new_connection(self) -> int:
        with self._conn_lock:
            self.connections += 1
            return self.connections

    def wait_if_hung(self, stop: threading.Event) -> bool:
        """Block while hung; True if it did (the client may have given up meanwhile)."""
        waited = False
        while not stop.is_set():
            left = self._hang_until - time.monotonic()
            if left <= 0:
                return waited
            waited = True
            stop.wait(left)
        return waited

    def drop_connections(self) -> None:
        """Close every client connection (SCPI and MCPHA); the board keeps listening."""
        for service in self._services:
            service.drop_connections()

    def corrupt_next_block(self, kind: str) -> None:
        """Spoil the next binary block sent: bad_header, truncated (then close) or short."""
        if kind not in CORRUPTIONS:
            raise ValueError(f"corruption kind must be one of {CORRUPTIONS}, got {kind!r}")
        self._corrupt.append(kind)

    def take_corruption(self) -> str | None:
        try:
            return self._corrupt.popleft()
        except IndexError:
            return None

    def attach(self, service: Service) -> None:
        self._services.append(service)
