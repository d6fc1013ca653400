"""Units and axes that travel with the data: sample index -> ns, counts -> volts.

Every channel of a batch has an `Axis`: the time of its first sample relative to the
trigger, the sample period, and the factor from stored numbers to the physical unit.
They come from the source's configuration (decimation, pretrigger, gain, ADC scale),
a stage that crops returns a new Axis, and files carry them as NeXus
`units` and axis datasets, so a pulse's position becomes a time and its height volts
without the analysis knowing which board made it.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

#: Sample period of a STEMlab 125-14 at decimation 1 (125 MS/s).
BOARD_SAMPLE_NS = 8.0
#: Red Pitaya SCPI RAW data: 14-bit ADC, 8192 counts over the full scale of the input range.
RP_COUNTS = 8192
RP_FULL_SCALE = {"LV": 1.0, "HV": 20.0}
#: KIT's MCPHA server: 4096 counts per volt.
MCPHA_COUNTS_PER_VOLT = 4096


@dataclass(frozen=True)
class Axis:
    """Time axis and value scale of one channel's waveforms."""

    sample_ns: float          # time between samples
    t0_ns: float              # time of sample 0, relative to the trigger (negative: pretrigger)
    scale: float = 1.0        # physical value = stored value * scale
    unit: str = "V"           # physical unit of the values ("V", or "counts" when uncalibrated)

    def times(self, n: int) -> np.ndarray:
        """Time (ns, relative to the trigger) of each of n samples."""
        return self.t0_ns + np.arange(n) * self.sample_ns

    def time_of(self, position: np.ndarray) -> np.ndarray:
        return self.t0_ns + np.asarray(position, dtype=np.float64) * self.sample_ns

    def cropped(self, start: int) -> "Axis":
        """The axis of samples start.. of this one."""
        return replace(self, t0_ns=self.t0_ns + start * self.sample_ns)

    def to_dict(self) -> dict[str, Any]:
        return {"sample_ns": self.sample_ns, "t0_ns": self.t0_ns, "scale": self.scale, "unit": self.unit}


def _pretrigger(source: Any, samples: int) -> int:
    pre = getattr(source, "pretrigger", None)
    return samples // 8 if pre is None else int(pre)


def source_axis(source: Any, samples: int, dtype: np.dtype) -> Axis:
    """The axis of a channel of `dtype` made by `source` (a topology source config)."""
    if source.kind == "replay":           # frames read back keep the axes they were taken with
        return source_axis(source.original, samples, dtype)
    floating = np.dtype(dtype).kind == "f"
    kind = source.kind
    if kind in ("redpitaya", "mcpha"):
        sample_ns = BOARD_SAMPLE_NS * source.decimation
    else:
        sample_ns = float(source.sample_ns)
    if floating:
        scale, unit = 1.0, ("counts" if kind == "pattern" else "V")
    elif kind == "synthetic":
        scale, unit = 1.0 / source.counts_per_volt, "V"
    elif kind == "redpitaya":
        scale, unit = RP_FULL_SCALE[source.gain] / RP_COUNTS, "V"
    elif kind == "mcpha":
        scale, unit = 1.0 / MCPHA_COUNTS_PER_VOLT, "V"
    else:
        scale, unit = 1.0, "counts"
    return Axis(sample_ns, -_pretrigger(source, samples) * sample_ns, scale, unit)


def stream_axes(topo: Any, stream: str, modules: list[str] | tuple[str, ...]) -> dict[str, Axis]:
    """Axis of every channel of `stream` from each module: {"module.channel": Axis}."""
    spec = topo.streams[stream]
    out = {}
    for m in modules:
        source = topo.acquisition[m].source
        for ch in spec.channels:
            out[f"{m}.{ch}"] = source_axis(source, spec.samples, spec.dtype.fields[ch][0].base)
    return out
