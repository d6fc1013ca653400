"""The MCPHA oscilloscope server of one board (the board's port 1001), as KIT's clients use it.

Protocol (from Pavel Demin's mcpha-server and the clients in GuenterQuast/redpitaya-daq
and JulianBaader/redpitaya-daq-coincidence): each command is one little-endian uint64,
code in bits 63-56, channel in bits 55-52, value in the low 52 bits.  Codes handled:

  2 reset the oscilloscope          4 decimation (value < 4 means 1; 1, 4, 8 ... 256 used)
  5 negate input <channel>          13 trigger source = <channel> (0 IN1, 1 IN2)
  14 slope (0 rising, 1 falling)    15 mode (0 normal, 1 auto)
  16 level, ADC counts (int16 in the low bits; 4096 counts per volt)
  17 samples before the trigger     18 total samples
  19 start the oscilloscope         11 status: 9 uint32, word 8 = position << 1 | busy
  20 read the last waveform         31 acquire <value> waveforms and send each as it is done
  12 read histogram (4096 uint32 zeros: histograms are not emulated); other codes are ignored.

A waveform is (total samples) x 2 int16, interleaved IN1, IN2, little-endian; the trigger
sample is at index (samples before the trigger).  Timing is real: after a start the
scope first records the pre-trigger samples, then waits for a real edge on the timeline
(auto mode: none, it fires at once), then records the rest; only then is it sent.
"""
from __future__ import annotations

import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from emulator.acquisition import Recorder
from emulator.signal import BoardSignal
from emulator.stats import Stats
from emulator.timeline import Clock
from emulator.trigger import TriggerSearch

if TYPE_CHECKING:
    from emulator.board import Board

COUNTS_PER_VOLT = 4096
LIMITS = (-4096, 4095)
MAX_SAMPLES = 0x7FFFFF
LOOKAHEAD_NS = 2e8
RETRY_S = 0.05
_WORD = struct.Struct("<Q")


@dataclass
class ScopeSettings:
    decimation: int = 4
    negate: tuple[bool, bool] = (False, False)
    channel: int = 0
    falling: bool = False
    auto: bool = False
    level: int = 0               # counts
    pre: int = 512
    total: int = 4096


class Scope(Recorder):
    """The MCPHA oscilloscope of one board (shared by its MCPHA connections)."""

    def __init__(self, signal: BoardSignal, clock: Clock, stats: Stats) -> None:
        super().__init__(signal, clock, stats)
        self.settings = ScopeSettings()
        self._start: int | None = None
        self._search: TriggerSearch | None = None
        self._trigger: int | None = None
        self._armed_with = self.settings

    def configure(self, code: int, chan: int, value: int) -> None:
        s = self.settings
        if code == 4:
            s.decimation = 1 if value < 4 else min(value, 65535)
        elif code == 5 and chan in (0, 1):
            neg = list(s.negate)
            neg[chan] = bool(value & 1)
            s.negate = (neg[0], neg[1])
        elif code == 13 and chan in (0, 1):
            s.channel = chan
        elif code == 14:
            s.falling = bool(value & 1)
        elif code == 15:
            s.auto = bool(value & 1)
        elif code == 16:
            s.level = int(np.int16(np.uint16(value & 0xFFFF)))
        elif code == 17:
            s.pre = max(1, min(value, MAX_SAMPLES))
        elif code == 18:
            s.total = max(1, min(value, MAX_SAMPLES))

    def reset(self) -> None:
        self._start = self._search = self._trigger = None

    def decimation_in_use(self) -> int:
        return self._armed_with.decimation

    def arm(self) -> None:
        """Code 19: record pre-trigger samples from the next sample on, then accept a trigger."""
        s = self._armed_with = ScopeSettings(**vars(self.settings))
        self._start = self.now() + 1
        self._trigger = None
        first = self._start + min(s.pre, s.total)
        if s.auto:
            self._trigger, self._search = first, None
            return
        negate = s.negate[s.channel]
        level = s.level / COUNTS_PER_VOLT
        clip = (LIMITS[0] / COUNTS_PER_VOLT, LIMITS[1] / COUNTS_PER_VOLT)
        if negate:      # trigger on the inverted input: mirror level, slope and clipping
            level, clip = -level, (-clip[1], -clip[0])
        rising = s.falling == negate
        self._search = TriggerSearch(self.signal, "IN2" if s.channel else "IN1", level, rising,
                                     s.decimation, first, clip=clip)

    def _last_sample(self, trigger: int) -> int:
        s = self._armed_with
        return trigger - min(s.pre, s.total) + s.total - 1

    def poll(self) -> int | None:
        """The trigger sample once the whole waveform has been recorded, else None."""
        if self._trigger is None and self._search is not None:
            k = self._search.advance(self.now() + int(LOOKAHEAD_NS / self.period_ns()))
            if k is not None:
                self._trigger, self._search = k, None
                self.stats.add("triggers")
        if self._trigger is not None and self.now() >= self._last_sample(self._trigger):
            return self._trigger
        return None

    def seconds_to_ready(self) -> float:
        """How long until the armed waveform can be complete (a retry interval if unknown)."""
        if self._trigger is None:
            return RETRY_S
        done_ns = (self._last_sample(self._trigger) + 1) * self.period_ns()
        return max(0.0, self.clock.monotonic_at(done_ns) - time.monotonic())

    def busy(self) -> bool:
        return self._start is not None and self.poll() is None

    def waveform(self) -> bytes:
        """The recorded waveform (or, not triggered yet, the samples up to now), interleaved."""
        s = self._armed_with
        pre = min(s.pre, s.total)
        first = (self._trigger - pre) if self._trigger is not None else self.now() - s.total + 1
        out = np.empty(2 * s.total, "<i2")
        for ch in (0, 1):
            volts = self.signal.render(ch, first, s.total, s.decimation)
            if s.negate[ch]:
                volts = -volts
            out[ch::2] = np.clip(np.rint(volts * COUNTS_PER_VOLT), *LIMITS)
        return out.tobytes()

    def status(self) -> bytes:
        words = np.zeros(9, "<u4")
        position = 0 if self._trigger is None else self._last_sample(self._trigger) & MAX_SAMPLES
        words[8] = (position << 1) | int(self.busy())
        return words.tobytes()


def _recv_exact(conn: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def serve_connection(board: "Board", stop: threading.Event, conn: socket.socket) -> None:
    """Execute command words until the client leaves (or the board drops it)."""
    scope = board.scope

    def send(payload: bytes) -> None:
        board.wait_if_hung(stop)
        board.count("bytes_sent", board.link.send(conn, payload, stop))

    while not stop.is_set():
        board.wait_if_hung(stop)
        word = _recv_exact(conn, 8)
        if word is None:
            return
        command = _WORD.unpack(word)[0]
        code, chan, value = command >> 56, (command >> 52) & 0xF, command & 0xFFFFFFFFFFFFF
        board.link.delay(stop)
        board.count("commands")
        with board.lock:
            if code == 2:
                scope.reset()
            elif code == 19:
                scope.arm()
            elif code in (4, 5, 13, 14, 15, 16, 17, 18):
                scope.configure(code, chan, value)
        if code == 11:
            with board.lock:
                payload = scope.status()
            send(payload)
        elif code == 12:
            send(bytes(16384))
        elif code == 20:
            with board.lock:
                payload = scope.waveform()
            send(payload)
        elif code == 31:
            for _ in range(value):
                payload = acquire(board, stop)
                if payload is None:
                    return
                board.count("waveforms")
                send(payload)


def acquire(board: "Board", stop: threading.Event) -> bytes | None:
    """Arm the scope, wait in real time for a triggered, complete waveform, return it."""
    scope = board.scope
    with board.lock:
        scope.arm()
    while not stop.is_set():
        board.wait_if_hung(stop)
        with board.lock:
            if scope.poll() is not None:
                board.count("captures")
                return scope.waveform()
            wait = scope.seconds_to_ready()
        stop.wait(min(wait, RETRY_S))
    return None
