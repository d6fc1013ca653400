"""procnode.testing.make_batch: a real EventBatch from plain arrays, for testing stages alone."""
from __future__ import annotations

import numpy as np
import pytest

from coordinator.frames import frame_dtype
from procnode.events import EventBatch
from procnode.testing import make_batch


def test_one_module_channels_axes_and_seq():
    w = np.arange(3 * 8, dtype=np.int16).reshape(3, 8)
    batch = make_batch({"IN1": w, "IN2": -w}, sample_ns=16.0, pretrigger=2, scale=0.5, seq0=10)
    assert isinstance(batch, EventBatch)
    assert batch.stream == "pulses" and batch.modules == ("m",) and len(batch) == 3
    assert batch.parts["m"].dtype == frame_dtype({"IN1": "int16", "IN2": "int16"}, 8)
    assert batch.channels("IN2") == ["m.IN2"]
    assert batch.wave_refs() == ["m.IN1", "m.IN2"]
    np.testing.assert_array_equal(batch.waveforms("m.IN1"), w)
    np.testing.assert_array_equal(batch.volts("m.IN2"), -w * 0.5)
    assert batch.volts("m.IN2").dtype == np.float32
    axis = batch.axis("m.IN1")
    assert (axis.sample_ns, axis.t0_ns, axis.scale, axis.unit) == (16.0, -32.0, 0.5, "V")
    np.testing.assert_array_equal(axis.times(8)[:3], [-32.0, -16.0, 0.0])
    np.testing.assert_array_equal(batch.seq, [10, 11, 12])
    np.testing.assert_array_equal(batch.timestamp, [0, 1000, 2000])
    assert batch.present("m").all() and not batch.events["flags"].any()


def test_several_modules_are_one_event_each_row():
    a = np.zeros((2, 4), np.int16)
    b = np.ones((2, 4), np.int16)
    batch = make_batch({"rp1.IN1": a, "rp2.IN1": b}, timestamps=[5, 7])
    assert batch.modules == ("rp1", "rp2")
    assert batch.channels("IN1") == ["rp1.IN1", "rp2.IN1"]
    assert batch.channels("rp2.IN1") == ["rp2.IN1"]
    np.testing.assert_array_equal(batch.waveforms("rp2.IN1"), b)
    np.testing.assert_array_equal(batch.events["present"], [3, 3])
    np.testing.assert_array_equal(batch.parts["rp2"]["timestamp"], [5, 7])
    # what stages do with it works as in a node: tables follow a selection
    batch.add_table("t", seq=batch.seq, x=np.array([1.0, 2.0]))
    kept = batch.select(np.array([False, True]))
    np.testing.assert_array_equal(kept.seq, [1])
    np.testing.assert_array_equal(kept.tables["t"]["x"], [2.0])


def test_one_dimensional_array_is_one_event():
    batch = make_batch({"IN1": np.array([0.0, 0.5, 0.25], np.float32)}, scale=1.0)
    assert len(batch) == 1
    np.testing.assert_array_equal(batch.volts("m.IN1"), [[0.0, 0.5, 0.25]])


@pytest.mark.parametrize("waveforms, match", [
    ({}, "at least one channel"),
    ({"IN1": np.zeros((2, 4)), "rp1.IN2": np.zeros((2, 4))}, "every one as 'module.CH'"),
    ({"IN1": np.zeros((2, 4)), "IN2": np.zeros((3, 4))}, "same shape"),
    ({"a.IN1": np.zeros((2, 4)), "b.IN2": np.zeros((2, 4))}, "same channels"),
    ({"IN1": np.zeros((2, 4), bool)}, "not a numeric"),
])
def test_inconsistent_input_is_refused(waveforms, match):
    with pytest.raises(ValueError, match=match):
        make_batch(waveforms)
