"""The interface between a frame source and the acquisition node's reader process.

The reader asks a source for runs of consecutive frames (as many as fit in its
ring) and sleeps until `pace(seq)` before publishing them, so one interface
serves simulated sources (which must pretend to be real time) and hardware
(which is paced by the hardware itself and returns 0.0).
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from coordinator.topology.model import SourceConfig, StreamConfig


@runtime_checkable
class Source(Protocol):
    """Produces the frames of one stream, numbered by seq from 0."""

    dtype: np.dtype  # the stream's frame record dtype

    def frames(self, first: int, n: int, out: np.ndarray | None = None) -> np.ndarray:
        """Records for seqs first..first+n-1, header and channels filled.

        If `out` (n records of `dtype`) is given it is filled and returned, so the
        reader can generate straight into its ring without an extra copy.
        """
        ...

    def pace(self, seq: int) -> float:
        """Seconds after the source's start at which frame `seq` exists in real time (0.0: now)."""
        ...

    def close(self) -> None:
        """Release whatever the source holds (buffers, devices)."""
        ...


def frame_buffer(dtype: np.dtype, n: int, out: np.ndarray | None = None) -> np.ndarray:
    """`out` checked to hold exactly n records of `dtype`, or a new such array."""
    if n < 0:
        raise ValueError(f"cannot produce {n} frames")
    if out is None:
        return np.empty(n, dtype=dtype)
    if out.dtype != dtype or out.shape != (n,):
        raise ValueError(
            f"out must be {n} records of the stream dtype, got shape {out.shape} of {out.dtype}"
        )
    return out


def make_source(config: SourceConfig, stream: StreamConfig, node: str = "",
                board: tuple[str, int] | None = None) -> Source:
    """The source described by `config`, producing frames of `stream`.

    `node` names the acquisition node (for error messages that name topology keys);
    `board` is where an emulated board listens (the coordinator started it)."""
    kind = getattr(config, "kind", None)
    if kind == "redpitaya":
        from acqnode.sources.redpitaya import RedPitayaFrames

        return RedPitayaFrames(config, stream, node, board)
    if kind == "mcpha":
        from acqnode.sources.mcpha import McphaFrames

        return McphaFrames(config, stream, node, board)
    if kind == "replay":
        from acqnode.sources.replay import ReplaySource

        return ReplaySource(Path(config.run), stream, node)
    if kind == "synthetic":
        from acqnode.sources.synthetic import SyntheticPulses

        return SyntheticPulses(config, stream)
    if kind == "pattern":
        from acqnode.sources.pattern import PatternFrames

        return PatternFrames(config, stream)
    raise ValueError(f"unknown source kind {kind!r} (known: synthetic, pattern, redpitaya, mcpha, replay)")
