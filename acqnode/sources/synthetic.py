"""Synthetic detector pulses: what a triggered digitiser on a PMT/SiPM would record.

Model
-----
* Events form a Poisson process at `rate` Hz, simulated on the 1 ns timestamp
  clock as a Bernoulli process: inter-arrival times are geometric with mean
  1e9/rate ns and at least 1 ns, so timestamps are strictly increasing integers.
  The run starts at t = 0 and `timestamp(0)` is the first inter-arrival time (> 0).
  With `rate: max` (None) frames are produced as fast as possible, `pace()` is
  0.0, and the timestamps follow a nominal 1 MHz process so they still look real.
* Frame seq is the trigger of event seq: its pulse starts at sample `pretrigger`.
  Pile-up: a Poisson number of further pulses, mean rate * frame duration, at
  uniform sample positions in the frame.  With `rate: max` there is no physical
  rate, so there is no pile-up.
* Pulse shape (1 - exp(-t/rise)) * exp(-t/decay) (a step when rise is 0), starts
  on the sample grid, normalised so its largest sample equals the amplitude.  It
  peaks at rise * ln(1 + decay/rise) after the start.
* Amplitudes (volts) come from a mixture of exponential / gaussian / uniform
  components, negative draws clipped to 0; `negative` polarity flips the sign.  All channels see
  the same pulses (one scintillator, several PMTs); noise is independent.
* Noise: baseline + gaussian noise, taken for speed as slices at random offsets
  of one bank of max(2**20, 4 * samples) normal samples drawn once from the
  seed.  Two frames share noise samples only when their offsets happen to be
  close; it looks white.
* Integer channels hold round(volts * counts_per_volt) clipped to the dtype's
  range; a frame with any sample at a limit gets FLAG_SATURATED.  Float channels
  hold volts.

Reproducibility
---------------
Frames are made in fixed blocks of `block_frames(samples)` frames.  Block b draws
its pulses and noise offsets from `default_rng([seed, EVENTS, b])` and its
inter-arrival times from `default_rng([seed, INTERVALS, b])`.  A block's start
time is the sum of the earlier blocks' intervals, kept in a table extended
lazily in order, so random access costs only interval draws (about 20 us per
earlier block: seq 10**7 on a fresh source takes ~0.7 s), never waveforms.
Hence `frames(first, n)` gives the same bytes for a seq however the requests
are split (for a given version of this module).
"""
from __future__ import annotations

from array import array
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from acqnode.sources.base import frame_buffer
from coordinator.frames import FLAG_SATURATED, channel_names
from coordinator.topology.model import Component, StreamConfig, SyntheticSource

#: Nominal event rate (Hz) of the simulated timestamps when `rate` is max.
NOMINAL_MAX_RATE = 1e6
#: Timestamps count ns; a Bernoulli process on that clock cannot exceed 1 GHz.
MAX_RATE = 1e9
#: Internal blocks hold about this many samples per channel (bounds memory for long frames).
BLOCK_SAMPLES = 1 << 20
MAX_BLOCK_FRAMES = 256
NOISE_BANK_SAMPLES = 1 << 20
#: Random-stream tags: each stream is seeded with [seed, tag] or [seed, tag, block].
_NOISE, _INTERVALS, _EVENTS = 0, 1, 2


def block_frames(samples: int) -> int:
    """Frames per internal generation block (part of the reproducibility contract)."""
    return max(1, min(MAX_BLOCK_FRAMES, BLOCK_SAMPLES // samples))


def pulse_template(samples: int, sample_ns: float, rise_ns: float, decay_ns: float) -> np.ndarray:
    """One pulse starting at sample 0, `samples` long, with its largest sample exactly 1."""
    length = samples
    if rise_ns > 0:
        # make sure the sampled peak is inside the array we normalise by
        t_peak = rise_ns * np.log1p(decay_ns / rise_ns)
        length = max(samples, int(np.ceil(t_peak / sample_ns)) + 2)
    t = np.arange(length) * sample_ns
    shape = np.exp(-t / decay_ns)
    if rise_ns > 0:
        shape *= -np.expm1(-t / rise_ns)
    return (shape / shape.max())[:samples]


def draw_amplitudes(rng: np.random.Generator, spectrum: tuple[Component, ...], n: int) -> np.ndarray:
    """n pulse heights (volts) from the mixture; negative draws become 0 (polarity sets the sign)."""
    weights = np.array([c.weight for c in spectrum], dtype=float)
    which = rng.choice(len(spectrum), size=n, p=weights / weights.sum())
    amps = np.empty(n)
    for k, comp in enumerate(spectrum):
        sel = which == k
        m = int(np.count_nonzero(sel))
        if m == 0:
            continue
        if comp.distribution == "exponential":
            amps[sel] = rng.exponential(comp.scale, m)
        elif comp.distribution == "gaussian":
            amps[sel] = rng.normal(comp.mean, comp.sigma, m)
        else:
            amps[sel] = rng.uniform(comp.low, comp.high, m)
    return np.maximum(amps, 0.0, out=amps)


@dataclass(frozen=True)
class _Channel:
    """How one channel field is produced."""

    name: str
    scale: float                        # volts -> stored unit (counts_per_volt or 1)
    work: np.dtype                      # arithmetic type (float32 unless precision needs more)
    limits: tuple[float, float] | None  # integer channels: clip range in `work`

    @property
    def key(self) -> tuple[float, str]:
        """Channels with equal keys share their noise bank and block signal."""
        return self.scale, self.work.str


def _plan_channel(name: str, dt: np.dtype, counts_per_volt: float) -> _Channel:
    if dt.kind == "f":
        return _Channel(name, 1.0, np.dtype(np.float64 if dt.itemsize > 4 else np.float32), None)
    info = np.iinfo(dt)
    # float32 represents every 16-bit count exactly; wider integers need float64
    work = np.dtype(np.float32 if dt.itemsize <= 2 else np.float64)
    lo, hi = work.type(info.min), work.type(info.max)
    if int(hi) > info.max:  # e.g. 2**63 - 1 rounds up in float64: stay inside the range
        hi = np.nextafter(hi, work.type(0))
    return _Channel(name, float(counts_per_volt), work, (float(lo), float(hi)))


def _validate(config: SyntheticSource, stream: StreamConfig, pretrigger: int) -> None:
    problems = []
    if config.rate is not None and not 0 < config.rate <= MAX_RATE:
        problems.append(f"rate must be in (0, {MAX_RATE:g}] Hz or max, got {config.rate}")
    if not 0 <= pretrigger < stream.samples:
        problems.append(f"pretrigger {pretrigger} outside the frame of {stream.samples} samples")
    if config.sample_ns <= 0 or config.decay_ns <= 0 or config.rise_ns < 0:
        problems.append("need sample_ns > 0, decay_ns > 0, rise_ns >= 0")
    if config.noise < 0:
        problems.append(f"noise must be >= 0, got {config.noise}")
    weights = [c.weight for c in config.amplitude]
    if not weights or min(weights) < 0 or sum(weights) <= 0:
        problems.append("amplitude spectrum needs components with weights >= 0 and a positive sum")
    for c in config.amplitude:
        if c.distribution not in ("exponential", "gaussian", "uniform"):
            problems.append(f"unknown amplitude distribution {c.distribution!r}")
    if problems:
        raise ValueError("synthetic source: " + "; ".join(problems))


class SyntheticPulses:
    """Seeded, reproducible detector-like frames for one stream (see the module docstring)."""

    def __init__(self, config: SyntheticSource, stream: StreamConfig) -> None:
        self.config = config
        self.dtype: np.dtype = stream.dtype
        self.samples = stream.samples
        self.pretrigger = stream.samples // 8 if config.pretrigger is None else config.pretrigger
        _validate(config, stream, self.pretrigger)
        self.block = block_frames(stream.samples)
        self._sign = -1.0 if config.polarity == "negative" else 1.0
        self._p_event_per_ns = (config.rate or NOMINAL_MAX_RATE) / 1e9
        self._pileup_mean = (
            0.0 if config.rate is None else config.rate * stream.samples * config.sample_ns * 1e-9
        )

        self._channels = [
            _plan_channel(n, self.dtype.fields[n][0].base, config.counts_per_volt)
            for n in channel_names(self.dtype)
        ]
        template = pulse_template(stream.samples, config.sample_ns, config.rise_ns, config.decay_ns)
        unit_noise = np.random.default_rng([config.seed, _NOISE]).standard_normal(
            max(NOISE_BANK_SAMPLES, 4 * stream.samples)
        )
        self._noise_offsets = unit_noise.size - stream.samples + 1  # possible slice starts
        # per channel key: pulse template, noise bank (baseline included), its windows and extremes
        self._template: dict[tuple, np.ndarray] = {}
        self._windows: dict[tuple, np.ndarray] = {}
        self._bank_range: dict[tuple, tuple[float, float]] = {}
        for ch in self._channels:
            if ch.key in self._template:
                continue
            self._template[ch.key] = (template * ch.scale).astype(ch.work)
            bank = ((config.baseline + config.noise * unit_noise) * ch.scale).astype(ch.work)
            self._windows[ch.key] = sliding_window_view(bank, stream.samples)
            self._bank_range[ch.key] = (float(bank.min()), float(bank.max()))
        self._signal = {k: np.empty((self.block, self.samples), t.dtype) for k, t in self._template.items()}

        self._starts = array("q", [0])  # start time (ns) of each block, extended in order
        self._ts_cache: tuple[int, np.ndarray] | None = None
        self._cached_index = -1
        self._cached: np.ndarray | None = None

    # ---- public interface ------------------------------------------------------------
    def frames(self, first: int, n: int, out: np.ndarray | None = None) -> np.ndarray:
        """Records for seqs first..first+n-1; whole blocks are generated straight into `out`."""
        if first < 0:
            raise ValueError(f"seq must be >= 0, got {first}")
        out = frame_buffer(self.dtype, n, out)
        seq, end = first, first + n
        while seq < end:
            b, k = divmod(seq, self.block)
            take = min(self.block - k, end - seq)
            dest = out[seq - first: seq - first + take]
            if take == self.block:
                self._fill_block(b, dest)
            else:
                dest[...] = self._block_records(b)[k: k + take]
            seq += take
        return out

    def pace(self, seq: int) -> float:
        """Simulated trigger time of `seq` in seconds; 0.0 for rate max (no waiting)."""
        if self.config.rate is None:
            return 0.0
        b, k = divmod(seq, self.block)
        return float(self._timestamps(b)[k]) / 1e9

    def close(self) -> None:
        """Drop the cached block (the source stays usable)."""
        self._cached, self._cached_index, self._ts_cache = None, -1, None

    # ---- timestamps ------------------------------------------------------------------
    def _intervals(self, b: int) -> np.ndarray:
        """Inter-arrival times (ns, >= 1) of block b's frames, each one ending at its frame."""
        rng = np.random.default_rng([self.config.seed, _INTERVALS, b])
        return rng.geometric(self._p_event_per_ns, self.block)

    def _timestamps(self, b: int) -> np.ndarray:
        """Trigger times (ns) of block b's frames."""
        if self._ts_cache is not None and self._ts_cache[0] == b:
            return self._ts_cache[1]
        while len(self._starts) <= b:
            last = len(self._starts) - 1
            self._starts.append(self._starts[last] + int(self._intervals(last).sum()))
        ts = (self._starts[b] + np.cumsum(self._intervals(b))).astype(np.uint64)
        self._ts_cache = (b, ts)
        return ts

    # ---- waveforms -------------------------------------------------------------------
    def _block_records(self, b: int) -> np.ndarray:
        """Block b, kept while requests slice it (the reader asks for arbitrary runs)."""
        if self._cached_index != b:
            if self._cached is None:
                self._cached = np.empty(self.block, self.dtype)
            self._cached_index = -1  # stays invalid if filling fails
            self._fill_block(b, self._cached)
            self._cached_index = b
        return self._cached

    def _fill_block(self, b: int, dest: np.ndarray) -> None:
        """Generate all frames of block b into `dest` (block-sized, stream dtype)."""
        B, S = self.block, self.samples
        dest["seq"] = np.arange(b * B, (b + 1) * B, dtype=np.uint64)
        dest["timestamp"] = self._timestamps(b)
        dest["reserved"] = 0

        # draw order is part of the reproducibility contract
        rng = np.random.default_rng([self.config.seed, _EVENTS, b])
        trigger_amp = self._sign * draw_amplitudes(rng, self.config.amplitude, B)
        n_pile = rng.poisson(self._pileup_mean, B) if self._pileup_mean > 0 else np.zeros(B, int)
        pile_frame = np.repeat(np.arange(B), n_pile)
        pile_start = rng.integers(0, S, pile_frame.size)
        pile_amp = self._sign * draw_amplitudes(rng, self.config.amplitude, pile_frame.size)
        offsets = rng.integers(0, self._noise_offsets, (len(self._channels), B))

        # the template lies in [0, 1] and all amplitudes of a block share the polarity, so
        # a frame's summed amplitude bounds its signal: only frames near a limit need clipping
        amp_sum = trigger_amp + np.bincount(pile_frame, weights=pile_amp, minlength=B)
        signals: dict[tuple, np.ndarray] = {}
        flags = np.zeros(B, np.uint32)
        for ch, offs in zip(self._channels, offsets):
            if ch.key not in signals:
                signals[ch.key] = self._build_signal(ch.key, trigger_amp, pile_frame, pile_start, pile_amp)
            values = self._windows[ch.key][offs]  # noise + baseline, (B, S)
            values += signals[ch.key]
            field = dest[ch.name]
            if ch.limits is None:
                field[...] = values
                continue
            lo, hi = ch.limits
            bank_lo, bank_hi = self._bank_range[ch.key]
            reach = amp_sum * ch.scale
            near = (bank_hi + np.maximum(reach, 0) >= hi - 1) | (bank_lo + np.minimum(reach, 0) <= lo + 1)
            if near.any():
                rows = np.flatnonzero(near)
                part = np.clip(np.rint(values[rows]), lo, hi)
                flags[rows[((part <= lo) | (part >= hi)).any(axis=1)]] |= FLAG_SATURATED
                values[rows] = part
            np.rint(values, out=field, casting="unsafe")
        dest["flags"] = flags

    def _build_signal(self, key: tuple, trigger_amp: np.ndarray, pile_frame: np.ndarray,
                      pile_start: np.ndarray, pile_amp: np.ndarray) -> np.ndarray:
        """Pulses of the block in the key's unit: trigger pulses at `pretrigger`, then pile-up."""
        template, signal = self._template[key], self._signal[key]
        P = self.pretrigger
        signal[:, :P] = 0
        np.multiply(trigger_amp.astype(template.dtype)[:, None], template[None, : self.samples - P],
                    out=signal[:, P:])
        # pile-up is rare at realistic rates: a loop over pulses beats any dense method
        for f, start, amp in zip(pile_frame.tolist(), pile_start.tolist(), pile_amp.tolist()):
            signal[f, start:] += template.dtype.type(amp) * template[: self.samples - start]
        return signal
