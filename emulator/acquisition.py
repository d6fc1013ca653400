"""The board's acquisition state machine (what the FPGA does between ACQ:START and a full buffer).

Timing is real: sample k of the acquisition's grid (decimation d, fixed at ACQ:START) is
written at emulator time k * 8 ns * d.  Nothing runs in the background: every question
(ACQ:TRig:STAT?, FILL?, WPOS?, a data read) brings the state up to the current time.

* ACQ:START: the write pointer starts at 0 with the next sample; a trigger source that is
  set (before or after START) arms the trigger from the sample after the command.
* The trigger fires on a real edge of the input (`emulator.trigger`); once its sample has
  been written in real time, the source register reads DISABLED (as the FPGA clears it),
  so ACQ:TRig:STAT? answers TD.  Before that it answers WAIT; with no source set, TD.
* The buffer keeps samples [trigger - (8192 - DLY), trigger + 8192 + DLY): writing stops
  after the last of them, and ACQ:TRig:FILL? answers 1 once it has been written.
* ACQ:STOP stops writing at once.  Every acquisition needs its own ACQ:START: a source set
  after a trigger has fired stays armed-but-idle (WAIT) until the next START.
* With a common trigger (`emulator.triggergroup`) the board does not search its own input:
  arming and disarming are told to the group, which fires every board at one instant;
  each command then holds the group's lock (inside the board's) so it sees one state.
"""
from __future__ import annotations

import math
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import numpy as np

from emulator.signal import BoardSignal
from emulator.stats import Stats
from emulator.timeline import Clock
from emulator.trigger import LOOKAHEAD_NS, TriggerSearch
from emulator.triggergroup import TriggerGroup, TriggerSpec, first_sample_at

BUFFER = 16384
HALF = BUFFER // 2
COUNTS = 8192
FULL_SCALE = {"LV": 1.0, "HV": 20.0}
SOURCES = ("DISABLED", "NOW", "CH1_PE", "CH1_NE", "CH2_PE", "CH2_NE", "EXT_PE", "EXT_NE", "AWG_PE", "AWG_NE")


def to_counts(volts: np.ndarray, gain: str) -> np.ndarray:
    """RAW counts of the 14-bit ADC: volts * 8192 / full scale, clipped to -8192..8191."""
    counts = np.rint(volts * (COUNTS / FULL_SCALE[gain]))
    return np.clip(counts, -COUNTS, COUNTS - 1).astype(np.int16)


def to_volts(counts: np.ndarray, gain: str) -> np.ndarray:
    return (counts.astype(np.float32) * np.float32(FULL_SCALE[gain] / COUNTS)).astype(np.float32)


@dataclass
class Settings:
    """Acquisition settings as ACQ:RST leaves them."""

    decimation: int = 1
    delay: int = 0               # ACQ:TRig:DLY, samples
    level: float = 0.0           # ACQ:TRig:LEV, volts
    hysteresis: float = 0.005    # stored only
    averaging: bool = True       # stored only
    units: str = "VOLTS"         # the real server keeps this one per board, not per client


class Recorder:
    """Something that writes samples of a board's inputs in real time at some decimation."""

    def __init__(self, signal: BoardSignal, clock: Clock, stats: Stats) -> None:
        self.signal = signal
        self.clock = clock
        self.stats = stats

    def decimation_in_use(self) -> int:
        raise NotImplementedError

    def period_ns(self) -> float:
        return self.signal.period_ns(self.decimation_in_use())

    def now(self) -> int:
        """Index of the newest sample written by now."""
        return int(self.clock.now_ns() // self.period_ns())


class Acquisition(Recorder):
    """ACQ:* state of one board, shared by all its SCPI connections (callers hold the lock).

    `group`/`member`: the common trigger this board belongs to and its index there (0: master).
    """

    def __init__(self, signal: BoardSignal, clock: Clock, stats: Stats, group: TriggerGroup | None = None,
                 member: int = 0) -> None:
        super().__init__(signal, clock, stats)
        self.group = group
        self.member = member
        self.settings = Settings()
        self.gain = ["LV", "LV"]
        self.source = "DISABLED"          # the FPGA's trigger source register
        self.tpos = 0
        self._dec = 1                     # decimation of the current acquisition
        self._start: int | None = None    # first sample of the current acquisition
        self._end: int | None = None      # last sample it will write (None: open-ended)
        self._trigger: int | None = None
        self._search: TriggerSearch | None = None
        self._filled = False
        self._cache: tuple[tuple, np.ndarray] | None = None

    # ---- commands ------------------------------------------------------------------
    def reset(self) -> None:
        """ACQ:RST: stop, defaults, trigger disabled."""
        with self._held():
            self.stop()
            self.settings = Settings()
            self.gain = ["LV", "LV"]
            self.source = "DISABLED"

    def start(self) -> None:
        with self._held():
            if self.group is not None:
                self.update()           # a group trigger that came first belongs to the old acquisition
            self._dec = self.settings.decimation
            now = self.now()
            self._start, self._end = now + 1, None
            self._trigger, self._search, self._filled = None, None, False
            if self.source != "DISABLED":
                self._arm(now + 1)
            else:
                self._disarm()

    def stop(self) -> None:
        with self._held():
            self.update()
            if self._start is not None and self._end is None:
                self._end = self.now()
            self._search = None
            self._disarm()

    def set_source(self, source: str) -> None:
        with self._held():
            self.update()
            self.source = source
            running = self._start is not None and self._end is None and self._trigger is None
            self._search = None
            if running and source != "DISABLED":
                self._arm(self.now() + 1)
            else:
                self._disarm()

    def retune(self) -> None:
        """Level or gain changed: an armed trigger looks for the new level from the next sample.

        In a trigger group only the master's level and gain matter; a slave's are ignored.
        """
        with self._held():
            self.update()
            if self.group is None:
                armed = self._search is not None
            else:
                armed = self.member == 0 and self.group.is_armed(self.member)
            if armed:
                self._arm(self.now() + 1)

    # ---- state ---------------------------------------------------------------------
    def decimation_in_use(self) -> int:
        return self._dec

    def _held(self) -> AbstractContextManager:
        """The group's lock for a whole command (taken inside the board's lock), or nothing."""
        return self.group.lock if self.group is not None else nullcontext()

    def _spec(self) -> TriggerSpec:
        """The trigger as the source register and the settings define it now."""
        src = self.source
        name = {"CH1": "IN1", "CH2": "IN2", "EXT": "EXT"}.get(src[:3], "NOW")
        if src.startswith("AWG"):
            name = None                    # no generator output is emulated: never fires
        scale = FULL_SCALE[self.gain[1 if name == "IN2" else 0]]
        return TriggerSpec(self.signal, name, self.settings.level, src.endswith("_PE"), self._dec,
                           clip=(-scale, scale * (COUNTS - 1) / COUNTS))

    def _arm(self, k: int) -> None:
        """Armed from sample k: search the own input, or tell the group."""
        if self.group is None:
            self._search = self._spec().search(k)
        else:
            self.group.arm(self.member, k * self._dec, self._spec())

    def _disarm(self) -> None:
        if self.group is not None:
            self.group.disarm(self.member)

    def _fire(self, k: int) -> None:
        """The trigger is sample k: the source register clears, the end of the buffer is known."""
        self._trigger, self._search = k, None
        self.source = "DISABLED"
        self.tpos = self.pointer(k)
        self._end = k + HALF + self.settings.delay - 1
        self.stats.add("triggers")

    def update(self) -> None:
        """Bring the trigger and fill state up to the current time."""
        with self._held():
            if self.group is not None:
                tick = self.group.take(self.member)
                if tick is not None:
                    self._fire(first_sample_at(tick, self._dec))
            elif self._search is not None:
                now = self.now()
                ahead = now + 1 if self._search.dense else now + int(LOOKAHEAD_NS / self.period_ns())
                k = self._search.advance(ahead)
                if k is not None and k <= now:
                    self._fire(k)
            if self._trigger is not None and not self._filled and self.now() >= max(self._end, self._trigger):
                self._filled = True
                self.stats.add("captures")

    def trigger_state(self) -> str:
        self.update()
        return "TD" if self.source == "DISABLED" else "WAIT"

    def filled(self) -> bool:
        self.update()
        return self._filled

    def trigger_time_ns(self) -> float | None:
        """Emulator time of the last trigger (for tests and the in-process API)."""
        return None if self._trigger is None else self._trigger * self.period_ns()

    def pointer(self, k: int) -> int:
        return (k - (self._start or 0)) % BUFFER

    def last_written(self) -> int:
        if self._start is None:
            return -1
        now = self.now()
        return now if self._end is None else min(now, self._end)

    def write_pointer(self) -> int:
        self.update()
        return 0 if self._start is None else self.pointer(self.last_written())

    # ---- data ----------------------------------------------------------------------
    def buffer(self, channel: int) -> np.ndarray:
        """The 16384 RAW counts of one input, indexed by buffer position."""
        self.update()
        last = self.last_written()
        key = (channel, self._start, last, self._dec, self.gain[channel])
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        first = last - BUFFER + 1
        counts = to_counts(self.signal.render(channel, first, BUFFER, self._dec), self.gain[channel])
        out = np.empty(BUFFER, np.int16)
        out[(np.arange(first, last + 1) - (self._start or 0)) % BUFFER] = counts
        self._cache = (key, out)
        return out

    def read(self, channel: int, start: int, n: int) -> np.ndarray:
        """n RAW counts from buffer position `start` on, wrapping around."""
        buf = self.buffer(channel)
        return buf[(start + np.arange(n)) % BUFFER]

    def oldest(self) -> int:
        """Buffer position of the oldest sample (the one after the write pointer)."""
        return (self.write_pointer() + 1) % BUFFER

    def delay_ns(self) -> int:
        return int(round(self.settings.delay * self.signal.period_ns(self.settings.decimation)))

    def set_delay_ns(self, ns: float) -> None:
        self.settings.delay = int(math.floor(ns / self.signal.period_ns(self.settings.decimation)))
