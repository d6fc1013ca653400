"""Finding the sample where a trigger fires, without generating every sample of a long wait.

An edge trigger fires at the first sample k >= the arming sample where the input crosses
the level in the right direction: rising, s[k-1] < level <= s[k]; falling,
s[k-1] > level >= s[k].  The search is incremental (`advance(limit)` examines samples
up to `limit` and remembers where it stopped), so a client polling ACQ:TRig:STAT? costs
only the samples written since its last poll.

Two strategies give the same answer (the samples are those `BoardSignal.render` gives):

* level more than `SIGMAS` noise sigmas from the baseline: noise alone cannot cross it,
  only pulses can, so only windows around pulses that can reach the level (their
  amplitude plus any pile-up still decaying under them) are rendered and scanned;
* otherwise: the signal is rendered in chunks and scanned densely.

The EXT input is modelled as a discriminator output driven by the same timeline: a logic
pulse of `EXT_WIDTH_NS` starts at every event, whatever its amplitude; EXT_PE fires on
its start, EXT_NE on its end.
"""
from __future__ import annotations

import math

import numpy as np

from emulator.signal import BoardSignal
from emulator.timeline import BLOCK_NS

SIGMAS = 6.0
EXT_WIDTH_NS = 100.0
DENSE_CHUNK = 1 << 16
#: Most samples one `advance` call scans densely (keeps a poll answer prompt).
DENSE_BUDGET = 1 << 22
#: How far ahead of real time a pulse-driven SCPI trigger search may look (it is cheap there).
LOOKAHEAD_NS = 1e9


def crossings(x: np.ndarray, level: float, rising: bool) -> np.ndarray:
    """Indices i >= 1 where x crosses `level` between x[i-1] and x[i] in the given direction."""
    a, b = x[:-1], x[1:]
    hit = (a < level) & (b >= level) if rising else (a > level) & (b <= level)
    return np.flatnonzero(hit) + 1


class TriggerSearch:
    """Search for the first trigger at or after sample `arm` (decimated grid)."""

    def __init__(self, signal: BoardSignal, source: str, level: float, rising: bool,
                 decimation: int, arm: int, clip: tuple[float, float] = (-math.inf, math.inf)) -> None:
        self.signal = signal
        self.source = source            # "IN1", "IN2", "EXT" or "NOW"
        self.level = float(level)
        self.rising = rising
        self.decimation = int(decimation)
        self.arm = int(arm)
        self.clip = clip
        self.pos = self.arm             # next candidate sample not yet examined
        self.found: int | None = self.arm if source == "NOW" else None
        distance = self.level - signal.baseline
        self.dense = abs(distance) <= SIGMAS * signal.noise
        # a pulse can only bring the input across the level if it points towards it
        self._margin = abs(distance) - SIGMAS * signal.noise
        self._toward = math.copysign(1.0, distance) if distance else 0.0

    @property
    def channel(self) -> int:
        return 1 if self.source == "IN2" else 0

    def advance(self, limit: int) -> int | None:
        """Examine samples up to `limit` (exclusive); the trigger sample once found."""
        if self.found is not None or limit <= self.pos:
            return self.found
        if self.source == "EXT":
            self._advance_ext(limit)
        elif self.dense:
            self._advance_dense(limit)
        else:
            self._advance_pulses(limit)
        return self.found

    def _scan(self, k0: int, n: int) -> int | None:
        """First crossing at an index >= self.pos within samples k0 .. k0+n-1."""
        x = self.signal.render(self.channel, k0, n, self.decimation)
        np.clip(x, self.clip[0], self.clip[1], out=x)
        hits = crossings(x, self.level, self.rising) + k0
        hits = hits[hits >= self.pos]
        return int(hits[0]) if hits.size else None

    def _advance_dense(self, limit: int) -> None:
        stop = min(limit, self.pos + DENSE_BUDGET)
        while self.pos < stop:
            n = min(DENSE_CHUNK, stop - self.pos)
            hit = self._scan(self.pos - 1, n + 1)
            if hit is not None:
                self.found = hit
                return
            self.pos += n

    def _advance_pulses(self, limit: int) -> None:
        # in steps of about one timeline block, so a near trigger never pays for a far limit
        step = max(1, int(BLOCK_NS / self.signal.period_ns(self.decimation)))
        while self.found is None and self.pos < limit:
            self._pulses_until(min(limit, self.pos + step), limit)

    def _pulses_until(self, stop: int, limit: int) -> None:
        """Examine pulses starting before `stop` (their windows may reach up to `limit`)."""
        tmpl_len = len(self.signal.template(self.decimation))
        # a pulse starting up to one template before pos may still be decaying across it, and
        # its reach counts the pulses up to one template before it
        starts, amps = self.signal.pulse_starts(self.pos - 2 * tmpl_len, stop, self.decimation)
        if starts.size and self._toward:
            toward = amps * self._toward
            # reach of each pulse: itself plus the pulses still under it (pile-up)
            cum = np.concatenate(([0.0], np.cumsum(np.abs(amps))))
            first = np.searchsorted(starts, starts - tmpl_len, side="right")
            reach = cum[np.arange(1, starts.size + 1)] - cum[first]
            candidates = np.flatnonzero((toward > 0) & (reach >= self._margin) & (starts >= self.pos - tmpl_len))
            for i in candidates:
                k0 = max(int(starts[i]) - 1, self.pos - 1)
                end = min(int(starts[i]) + tmpl_len, limit)
                if end - k0 < 2:
                    continue
                hit = self._scan(k0, end - k0)
                if hit is not None:
                    self.found = hit
                    return
        self.pos = stop

    def _advance_ext(self, limit: int) -> None:
        period = self.signal.period_ns(self.decimation)
        shift = 0 if self.rising else int(math.ceil(EXT_WIDTH_NS / period))
        starts, _ = self.signal.pulse_starts(self.pos - shift, limit - shift, self.decimation)
        edges = starts + shift
        edges = edges[(edges >= self.pos) & (edges < limit)]
        if edges.size:
            self.found = int(edges[0])
        else:
            self.pos = limit
