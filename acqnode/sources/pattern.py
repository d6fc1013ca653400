"""Test pattern source: frame `seq`, channel k holds table[(seq + 37*k) % P : ... + samples].

Nearly free to produce (one gather copy per batch), deterministic and easy to
verify anywhere downstream, so transport benchmarks measure transport.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from acqnode.sources.base import frame_buffer
from coordinator.frames import channel_names
from coordinator.topology.model import PatternSource, StreamConfig

PERIOD = 251  # prime, so shifts of different channels and seqs rarely line up


def pattern_table(dtype: np.dtype, samples: int) -> np.ndarray:
    """Windows of a ramp: row r is the samples of shift r."""
    info_max = np.iinfo(dtype).max if dtype.kind in "iu" else 2**15
    ramp = (np.arange(samples + PERIOD) % min(info_max, 4096)).astype(dtype)
    return sliding_window_view(ramp, samples)


class PatternFrames:
    def __init__(self, config: PatternSource, stream: StreamConfig) -> None:
        self.config = config
        self.dtype = stream.dtype
        self.channels = channel_names(self.dtype)
        self.tables = {c: pattern_table(self.dtype.fields[c][0].base, stream.samples) for c in self.channels}
        self.period_ns = 1e9 / config.rate if config.rate else 1000.0

    def frames(self, first: int, n: int, out: np.ndarray | None = None) -> np.ndarray:
        out = frame_buffer(self.dtype, n, out)
        seq = np.arange(first, first + n, dtype=np.uint64)
        out["seq"] = seq
        out["timestamp"] = (seq * self.period_ns).astype(np.uint64)
        out["flags"] = 0
        out["reserved"] = 0
        if self.config.payload == "none":
            return out
        for k, c in enumerate(self.channels):
            rows = (seq + 37 * k) % PERIOD
            if n <= 4:   # large frames come few at a time: copy rows, no 1 MiB temporary
                for j, r in enumerate(rows):
                    out[c][j] = self.tables[c][r]
            else:
                out[c] = self.tables[c][rows]
        return out

    def pace(self, seq: int) -> float:
        return seq / self.config.rate if self.config.rate else 0.0

    def close(self) -> None:
        pass
