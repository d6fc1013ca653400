"""What one board's inputs see: baseline + gaussian noise + the timeline's pulses.

A sample is addressed by its absolute index k on the grid of its decimation d: it is the
input at time k * 8 ns * d on the emulator clock.  `BoardSignal.render` is a pure function
of (channel, k, d), so any window can be rendered again and gives the same values: the
trigger search and the read-out of a frozen buffer agree sample for sample.

* Pulses: the shape of `acqnode.sources.synthetic.pulse_template` (rise, exponential
  decay, largest sample = amplitude), started on the first sample at or after the pulse
  time.  Both inputs see the same pulses (one scintillator, two photomultipliers).  With
  decimation > 1 the shape is point-sampled (the board's averaging is not modelled).
* Noise: white gaussian, `noise` volts rms, own per board and input.  For speed it is
  taken in chunks of `CHUNK` samples from one bank of `BANK` normal samples drawn once
  from the seed; the offset of chunk c in the bank is a hash of (c, d).  Windows of the
  same samples always get the same noise; different chunks look independent.
"""
from __future__ import annotations

import math

import numpy as np

from acqnode.sources.synthetic import pulse_template
from emulator.timeline import Timeline

#: ns per sample at decimation 1 (125 MS/s).
BASE_NS = 8.0
BANK = 1 << 20
CHUNK = 1 << 12
#: A pulse is followed until it has decayed below this fraction of its peak.
TAIL = 1e-4
_NOISE = 7   # random-stream tag
_MASK = (1 << 64) - 1


def _mix(x: int) -> int:
    """splitmix64 finaliser: a cheap, well-spread hash of a 64-bit integer."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


class NoiseBank:
    """Unit gaussian noise addressed by (sample index, decimation)."""

    def __init__(self, seed: int, board: int, channel: int) -> None:
        rng = np.random.default_rng([seed, _NOISE, board, channel])
        self._bank = rng.standard_normal(BANK).astype(np.float32)
        self._salt = _mix((seed << 20) ^ (board << 8) ^ channel)

    def unit(self, k0: int, n: int, decimation: int) -> np.ndarray:
        """n unit-variance samples for indices k0 .. k0+n-1."""
        out = np.empty(n, np.float64)
        k, end = k0, k0 + n
        span = BANK - CHUNK
        while k < end:
            c, r = divmod(k, CHUNK)
            take = min(CHUNK - r, end - k)
            off = _mix(self._salt ^ _mix((c & _MASK) ^ (decimation << 48))) % span + r
            out[k - k0: k - k0 + take] = self._bank[off: off + take]
            k += take
        return out


class BoardSignal:
    """The two inputs of one board (channel 0 = IN1, 1 = IN2), in volts, unclipped."""

    def __init__(self, timeline: Timeline, seed: int, board: int, noise: float, baseline: float,
                 rise_ns: float, decay_ns: float) -> None:
        self.timeline = timeline
        self.noise = float(noise)
        self.baseline = float(baseline)
        self.rise_ns = float(rise_ns)
        self.decay_ns = float(decay_ns)
        self._banks = (NoiseBank(seed, board, 0), NoiseBank(seed, board, 1))
        self._templates: dict[int, np.ndarray] = {}

    @staticmethod
    def period_ns(decimation: int) -> float:
        return BASE_NS * decimation

    def template(self, decimation: int) -> np.ndarray:
        """Pulse shape at this decimation, long enough to reach `TAIL` of its peak."""
        t = self._templates.get(decimation)
        if t is None:
            period = self.period_ns(decimation)
            tail_ns = self.rise_ns * 5 + self.decay_ns * math.log(1 / TAIL)
            length = max(2, int(math.ceil(tail_ns / period)) + 2)
            t = pulse_template(length, period, self.rise_ns, self.decay_ns)
            self._templates[decimation] = t
        return t

    def pulse_starts(self, k0: int, k1: int, decimation: int) -> tuple[np.ndarray, np.ndarray]:
        """Pulses whose first sample lies in [k0, k1): (start indices, amplitudes)."""
        period = self.period_ns(decimation)
        times, amps = self.timeline.pulses((k0 - 1) * period, k1 * period)
        starts = np.ceil(times / period).astype(np.int64)
        keep = (starts >= k0) & (starts < k1)
        return starts[keep], amps[keep]

    def render(self, channel: int, k0: int, n: int, decimation: int) -> np.ndarray:
        """Input `channel` at samples k0 .. k0+n-1 (volts)."""
        out = self._banks[channel].unit(k0, n, decimation)
        out *= self.noise
        out += self.baseline
        tmpl = self.template(decimation)
        starts, amps = self.pulse_starts(k0 - len(tmpl) + 1, k0 + n, decimation)
        if starts.size:
            idx = starts[:, None] + np.arange(len(tmpl))[None, :] - k0
            vals = amps[:, None] * tmpl[None, :]
            inside = (idx >= 0) & (idx < n)
            out += np.bincount(idx[inside], weights=vals[inside], minlength=n)
        return out
