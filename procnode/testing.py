"""Test helpers for pipeline stages: a real `EventBatch` from plain arrays.

A stage only sees an `EventBatch`, so it can be tested alone, without a topology, a
running node or a board: build the batch it would get and call it.  `make_batch`
builds that batch with the same frame records (`coordinator.frames.frame_dtype`) and
the same `EventBatch` code a processing node uses, so what passes here behaves the
same in a run (see docs/stages.md, "Testing a stage alone").
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from coordinator.frames import frame_dtype
from procnode.events import EVENT_DTYPE, EventBatch
from coordinator.units import Axis

#: Module name used when the waveforms are keyed by channel alone ("IN1").
DEFAULT_MODULE = "m"


def make_batch(waveforms: dict[str, np.ndarray], *, stream: str = "pulses", sample_ns: float = 8.0,
               pretrigger: int = 0, scale: float = 1 / 8192, unit: str = "V", seq0: int = 0,
               timestamps: Sequence[int] | np.ndarray | None = None) -> EventBatch:
    """An EventBatch of n events holding `waveforms`.

    waveforms: "CH" -> (n, samples) array (one module, named "m"), or "module.CH" -> array
        (several modules, in the order of first appearance; every module has the same
        channels).  The array's dtype is the channel's stored type (int16 for ADC counts);
        a 1-D array is one event.
    sample_ns, pretrigger: the time axis of every channel: sample i is at
        (i - pretrigger) * sample_ns ns from the trigger.
    scale, unit: physical value = stored value * scale, in `unit` (the default is a Red
        Pitaya's LV range, 8192 counts per volt); for float waveforms already in volts
        pass scale=1.0.
    seq0: seq of the first event (seqs are seq0, seq0 + 1, ...).
    timestamps: ns per event, the same for every module (default: 1000 ns apart).

    Every part is present and no flag is set.  Raises ValueError for inconsistent input.
    """
    if not waveforms:
        raise ValueError("make_batch needs at least one channel")
    qualified = ["." in key for key in waveforms]
    if any(qualified) and not all(qualified):
        raise ValueError("key every channel as 'CH' (one module) or every one as 'module.CH'")
    by_module: dict[str, dict[str, np.ndarray]] = {}
    for key, values in waveforms.items():
        module, ch = key.split(".", 1) if "." in key else (DEFAULT_MODULE, key)
        if not ch.isidentifier():
            raise ValueError(f"{key!r}: a channel name must be a Python identifier")
        arr = np.asarray(values)
        by_module.setdefault(module, {})[ch] = arr[None, :] if arr.ndim == 1 else arr
    modules = tuple(by_module)
    first = by_module[modules[0]]
    shapes = {a.shape for chans in by_module.values() for a in chans.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"every waveform array must have the same shape (n, samples); got {sorted(shapes)}")
    n, samples = next(iter(shapes))
    for module, chans in by_module.items():
        if list(chans) != list(first) or any(chans[c].dtype != first[c].dtype for c in chans):
            raise ValueError(f"module {module!r} has channels {list(chans)}; every module needs the same "
                             f"channels with the same dtypes as {modules[0]!r} ({list(first)})")
    dtype = frame_dtype({ch: str(a.dtype) for ch, a in first.items()}, samples)
    seq = np.arange(seq0, seq0 + n, dtype=np.uint64)
    ts = np.arange(n, dtype=np.uint64) * 1000 if timestamps is None else np.asarray(timestamps, np.uint64)
    if ts.shape != (n,):
        raise ValueError(f"timestamps: expected {n} values, got shape {ts.shape}")
    axis = Axis(float(sample_ns), -pretrigger * float(sample_ns), float(scale), unit)
    axes = {f"{m}.{ch}": axis for m in modules for ch in first}
    parts = {}
    for module, chans in by_module.items():
        rec = np.zeros(n, dtype)
        rec["seq"] = seq
        rec["timestamp"] = ts
        for ch, arr in chans.items():
            rec[ch] = arr
        parts[module] = rec
    if len(modules) == 1:
        return EventBatch.from_frames(stream, modules, modules[0], parts[modules[0]], axes)
    events = np.zeros(n, EVENT_DTYPE)
    events["seq"] = seq
    events["timestamp"] = ts
    events["present"] = (1 << len(modules)) - 1
    return EventBatch(stream, modules, events, parts, axes)
