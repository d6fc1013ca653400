"""The pattern source: the bytes end-to-end tests check, and its header-only benchmark mode."""
from __future__ import annotations

import numpy as np

from acqnode.sources.pattern import PERIOD, PatternFrames, pattern_table
from coordinator.topology.model import PatternSource, StreamConfig

STREAM = StreamConfig(name="s", samples=300, channels={"IN1": "int16", "IN2": "float32"},
                      modules=("a",))


def test_channel_k_of_frame_seq_is_the_ramp_shifted_by_seq_plus_37k() -> None:
    frames = PatternFrames(PatternSource(), STREAM).frames(250, 6)
    for j, seq in enumerate(range(250, 256)):
        assert frames["seq"][j] == seq
        for k, c in enumerate(("IN1", "IN2")):
            table = pattern_table(np.dtype(frames.dtype[c].base), STREAM.samples)
            assert np.array_equal(frames[c][j], table[(seq + 37 * k) % PERIOD])


def test_payload_none_writes_headers_and_leaves_samples_alone() -> None:
    out = np.zeros(3, STREAM.dtype)
    out["IN1"] = 7
    PatternFrames(PatternSource(rate=1000.0, payload="none"), STREAM).frames(10, 3, out=out)
    assert out["seq"].tolist() == [10, 11, 12]
    assert out["timestamp"].tolist() == [10_000_000, 11_000_000, 12_000_000]
    assert (out["IN1"] == 7).all() and (out["IN2"] == 0).all()
