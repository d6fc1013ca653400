"""One clock and one seeded event timeline for the boards of an emulator.

Why a timeline and not per-request random pulses: the modules of one detector must see
the same events (a trigger on board A and on board B at the same instant), and a board
must see the same samples whenever it looks at the same moment (the trigger search and
the later read-out of the buffer must agree sample for sample).  Both follow from making
the pulses a pure function of (seed, stream, time block):

* time runs in ns on `Clock` (time.monotonic_ns() relative to the emulator's start);
* time is cut into blocks of `BLOCK_NS`; block b holds a Poisson number of pulses
  (mean rate * block length) at uniform times, drawn from
  ``np.random.default_rng([seed, _PULSES, stream, b])``; amplitudes come from
  `acqnode.sources.synthetic.draw_amplitudes` with the same generator, so the spectrum
  is the project's (a line on a continuum by default);
* nothing happens before time 0 (the detector is switched on with the emulator).

Boards that share a timeline use the same `stream`; independent boards get their own.
"""
from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict

import numpy as np

from acqnode.sources.synthetic import draw_amplitudes
from coordinator.topology.model import Component

#: Length of one generation block (about 16.8 ms).
BLOCK_NS = 1 << 24
#: Blocks kept in memory per timeline (older ones are drawn again if needed).
CACHE_BLOCKS = 512
_PULSES = 11   # random-stream tag (noise banks use another tag)


class Clock:
    """Emulator time in ns since the emulator started (monotonic, shared by all boards)."""

    def __init__(self) -> None:
        self._t0 = time.monotonic_ns()

    def now_ns(self) -> int:
        return time.monotonic_ns() - self._t0

    def monotonic_at(self, t_ns: float) -> float:
        """time.monotonic() value at emulator time `t_ns` (for sleeping until a sample is written)."""
        return (self._t0 + t_ns) / 1e9


class Timeline:
    """Poisson pulse times (ns) and signed amplitudes (V), reproducible from the seed."""

    def __init__(self, rate: float, seed: int, stream: int, spectrum: tuple[Component, ...],
                 polarity: str = "positive") -> None:
        self.rate = float(rate)
        self.seed = int(seed)
        self.stream = int(stream)
        self.spectrum = tuple(spectrum)
        self.sign = -1.0 if polarity == "negative" else 1.0
        self._mean = self.rate * BLOCK_NS * 1e-9
        self._cache: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()

    def _block(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            hit = self._cache.get(b)
            if hit is not None:
                self._cache.move_to_end(b)
                return hit
        rng = np.random.default_rng([self.seed, _PULSES, self.stream, b])
        n = int(rng.poisson(self._mean)) if self._mean > 0 else 0
        times = b * float(BLOCK_NS) + np.sort(rng.uniform(0.0, BLOCK_NS, n))
        amps = self.sign * draw_amplitudes(rng, self.spectrum, n) if n else np.empty(0)
        with self._lock:
            self._cache[b] = (times, amps)
            while len(self._cache) > CACHE_BLOCKS:
                self._cache.popitem(last=False)
        return times, amps

    def pulses(self, t0_ns: float, t1_ns: float) -> tuple[np.ndarray, np.ndarray]:
        """Pulses with t0 <= time < t1, sorted by time: (times_ns, amplitudes_V)."""
        t0 = max(float(t0_ns), 0.0)
        if t1_ns <= t0 or self._mean <= 0:
            return np.empty(0), np.empty(0)
        first, last = int(t0 // BLOCK_NS), int(math.ceil(t1_ns / BLOCK_NS))
        parts = [self._block(b) for b in range(first, last)]
        times = np.concatenate([p[0] for p in parts])
        amps = np.concatenate([p[1] for p in parts])
        lo, hi = np.searchsorted(times, [t0, t1_ns], side="left")
        return times[lo:hi], amps[lo:hi]
