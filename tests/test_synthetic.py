"""Synthetic pulse source: reproducibility, timing, pulse shape, spectrum, noise, ranges."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from acqnode.sources.base import Source, make_source
from acqnode.sources.synthetic import SyntheticPulses, block_frames, pulse_template
from coordinator.frames import FLAG_SATURATED
from coordinator.topology.model import Component, StreamConfig, SyntheticSource

CPV = 8192.0
LINE = (Component("gaussian", mean=0.5, sigma=1e-6),)  # practically one amplitude


def stream(samples: int = 256, **channels: str) -> StreamConfig:
    return StreamConfig("s", samples, channels or {"IN1": "int16", "IN2": "int16"}, ("acq",))


def source(samples: int = 256, channels: dict | None = None, **config) -> SyntheticPulses:
    return SyntheticPulses(SyntheticSource(**config), stream(samples, **(channels or {})))


def quiet(**config) -> SyntheticPulses:
    """Noise-free, single-line pulses, no pile-up: every frame is the bare trigger pulse."""
    return source(**{"noise": 0.0, "amplitude": LINE, "rate": None, **config})


# ---- reproducibility -----------------------------------------------------------------
def test_same_seed_same_bytes_other_seed_differs():
    a = source(seed=7).frames(0, 300)
    assert a.tobytes() == source(seed=7).frames(0, 300).tobytes()
    assert a.tobytes() != source(seed=8).frames(0, 300).tobytes()


def test_frames_independent_of_how_requests_are_split():
    whole = source(seed=3).frames(0, 1000)
    src = source(seed=3)
    out = np.empty(500, src.dtype)
    parts = [src.frames(0, 7), src.frames(7, 500, out=out), src.frames(507, 493)]
    assert np.concatenate(parts).tobytes() == whole.tobytes()


def test_random_access_matches_forward_generation():
    forward = source(samples=64, seed=5)
    chunks = [forward.frames(s, 997) for s in range(0, 100_005, 997)]
    expected = np.concatenate(chunks)[100_000:100_005]
    fresh = source(samples=64, seed=5)
    assert fresh.frames(100_000, 5).tobytes() == expected.tobytes()
    # and backwards again, after having moved on
    assert fresh.frames(10, 3).tobytes() == np.concatenate(chunks)[10:13].tobytes()


def test_out_array_is_filled_and_checked():
    src = source()
    out = np.zeros(40, src.dtype)
    assert src.frames(300, 40, out=out) is out
    assert out.tobytes() == source().frames(300, 40).tobytes()
    with pytest.raises(ValueError):
        src.frames(0, 41, out=out)
    assert len(src.frames(5, 0)) == 0


# ---- header and timing ---------------------------------------------------------------
def test_header_fields_and_poisson_timestamps():
    rate, n = 5000.0, 20_000
    src = source(samples=32, rate=rate)
    f = src.frames(0, n)
    assert np.array_equal(f["seq"], np.arange(n))
    assert not f["reserved"].any()
    ts = f["timestamp"].astype(np.int64)
    assert ts[0] > 0 and np.all(np.diff(ts) > 0)
    intervals = np.diff(np.concatenate([[0], ts]))
    mean = 1e9 / rate  # exponential: sigma of one interval == mean
    assert abs(intervals.mean() - mean) < 5 * mean / np.sqrt(n)
    # exponential, not regular: coefficient of variation ~ 1
    assert 0.9 < intervals.std() / intervals.mean() < 1.1
    for seq in (0, 1, 255, 256, 9999, n - 1):
        assert src.pace(seq) == f["timestamp"][seq] / 1e9


def test_rate_max_has_no_pacing_but_realistic_timestamps():
    n = 20_000
    src = source(samples=32, rate=None)
    ts = src.frames(0, n)["timestamp"].astype(np.int64)
    assert np.all(np.diff(ts) > 0)
    assert abs(ts[-1] / n - 1000.0) < 5 * 1000.0 / np.sqrt(n)  # nominal 1 MHz
    assert src.pace(0) == src.pace(12345) == 0.0


# ---- pulse shape ---------------------------------------------------------------------
def test_trigger_pulse_position_and_height():
    cfg = SyntheticSource(noise=0.0, amplitude=LINE, rate=None)
    src = SyntheticPulses(cfg, stream())
    f = src.frames(0, 50)
    pre = 256 // 8
    peak_delay = cfg.rise_ns * np.log(1 + cfg.decay_ns / cfg.rise_ns) / cfg.sample_ns  # ~7.9 samples
    for name in ("IN1", "IN2"):
        w = f[name].astype(float)
        assert not w[:, : pre + 1].any()  # flat before, pulse starts at sample `pretrigger`
        assert np.all(np.abs(w.argmax(axis=1) - (pre + peak_delay)) <= 1)
        assert np.all(np.abs(w.max(axis=1) - 0.5 * CPV) <= 1)
    assert np.array_equal(f["IN1"], f["IN2"])  # same pulses on every channel


def test_explicit_pretrigger_and_step_decay():
    cfg = dict(pretrigger=10, rise_ns=0.0, decay_ns=400.0)
    w = quiet(**cfg).frames(0, 5)["IN1"].astype(float)
    assert np.all(w.argmax(axis=1) == 10) and not w[:, :10].any()
    k = np.arange(0, 150)
    expected = 0.5 * CPV * np.exp(-k * 8.0 / 400.0)
    assert np.all(np.abs(w[:, 10 + k] - expected) <= 0.5 + 1e-6)
    assert abs(w[0, 10 + 50] - 0.5 * CPV / np.e) <= 0.5  # one decay constant = 50 samples


def test_decay_with_rise_follows_exponential():
    w = quiet(samples=1024).frames(0, 3)["IN1"].astype(float)
    t0 = 128 + 40  # well past the peak: the rise term is ~1
    assert np.allclose(w[:, t0 + 100] / w[:, t0], np.exp(-1.0), atol=2e-3)  # 100 samples = 800 ns


def test_template_peak_is_one():
    for rise in (0.0, 1.0, 16.0, 200.0):
        t = pulse_template(64, 8.0, rise, 800.0)
        assert t.max() == 1.0 and t.min() >= 0.0
    assert pulse_template(1, 8.0, 16.0, 800.0).shape == (1,)


# ---- amplitudes, noise, pile-up ------------------------------------------------------
def test_spectrum_line_on_continuum():
    src = source(rate=None, noise=0.001)  # default spectrum: exponential 0.1 V + line at 0.5 V
    f = src.frames(0, 8000)
    heights = (f["IN1"].max(axis=1) - 0.0) / CPV
    counts, edges = np.histogram(heights, bins=np.arange(0.2, 1.0, 0.01))
    mode = edges[counts.argmax()] + 0.005
    assert abs(mode - 0.5) < 3 * 0.02
    line = np.mean(np.abs(heights - 0.5) < 0.06)
    assert 0.15 < line < 0.25  # weight 0.2 (+ the continuum's tiny share there)
    assert np.mean(heights < 0.2) > 0.6  # exponential continuum with mean 0.1 V


def test_noise_rms_in_pretrigger_region_and_independent_channels():
    src = source(samples=1024, rate=None, noise=0.002, baseline=0.01)
    f = src.frames(0, 500)
    pre = 1024 // 8
    a, b = (f[n][:, :pre].astype(float) for n in ("IN1", "IN2"))
    assert abs(a.mean() - 0.01 * CPV) < 1.0
    assert abs(a.std() / (0.002 * CPV) - 1) < 0.1
    assert abs(b.std() / (0.002 * CPV) - 1) < 0.1
    assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 0.05


def test_pileup_follows_rate_and_is_absent_at_rate_max():
    samples, sample_ns, rate = 256, 8.0, 500_000.0
    mu = rate * samples * sample_ns * 1e-9  # ~1.02 extra pulses per frame
    n = 4000
    w = quiet(rate=rate, rise_ns=0.0).frames(0, n)["IN1"]
    bare = quiet(rate=None, rise_ns=0.0).frames(0, 1)["IN1"][0]
    clean = np.mean(np.abs(w.astype(int) - bare).max(axis=1) < 100)  # an extra pulse adds >= 4096
    assert abs(clean - np.exp(-mu)) < 5 * np.sqrt(np.exp(-mu) * (1 - np.exp(-mu)) / n)
    w_max = quiet(rise_ns=0.0).frames(0, 1000)["IN1"]
    assert np.abs(w_max.astype(int) - bare).max() < 100


# ---- polarity, ranges, types ---------------------------------------------------------
def test_negative_polarity():
    w = quiet(polarity="negative").frames(0, 20)["IN1"].astype(float)
    assert np.all(w.max(axis=1) == 0)
    assert np.all(np.abs(w.min(axis=1) + 0.5 * CPV) <= 1)


@pytest.mark.parametrize("polarity, limit", [("positive", 32767), ("negative", -32768)])
def test_saturation_clips_and_flags(polarity, limit):
    spectrum = (Component("gaussian", weight=1, mean=0.5, sigma=1e-6),
                Component("gaussian", weight=1, mean=5.0, sigma=1e-6))  # 5 V > 4 V range
    f = source(noise=0.002, rate=None, polarity=polarity, amplitude=spectrum).frames(0, 400)
    big = np.abs(f["IN1"].astype(int)).max(axis=1) > CPV
    assert 100 < big.sum() < 300
    assert np.array_equal(f["flags"] & FLAG_SATURATED != 0, big)
    extreme = f["IN1"].max(axis=1) if polarity == "positive" else f["IN1"].min(axis=1)
    assert np.all(extreme[big] == limit)


def test_uint8_channel_clips_at_zero():
    f = quiet(channels={"A": "uint8"}, baseline=0.01, counts_per_volt=100.0).frames(0, 10)
    assert np.all(f["A"][:, 0] == 1) and np.all(f["A"].max(axis=1) == 51)
    assert not f["flags"].any()
    f = source(channels={"A": "uint8"}, noise=0.05, rate=None, counts_per_volt=100.0).frames(0, 10)
    assert np.all(f["flags"] & FLAG_SATURATED)  # noise around 0 hits the lower limit


def test_float_channels_hold_volts():
    f = quiet(channels={"V": "float32", "C": "int16", "D": "float64"}, baseline=0.1).frames(0, 10)
    assert f.dtype["V"].base == np.float32
    assert np.allclose(f["V"].max(axis=1), 0.6, atol=1e-5)
    assert np.allclose(f["D"].max(axis=1), 0.6, atol=1e-9)
    assert np.allclose(f["V"][:, 0], 0.1)
    assert np.abs(f["D"] * CPV - f["C"]).max() <= 0.5 + 1e-3  # int16 works in float32


def test_wide_integer_channels():
    f = quiet(channels={"A": "int32", "B": "int64"}, amplitude=(Component("uniform", low=1e10, high=2e10),),
              counts_per_volt=1e9).frames(0, 5)
    assert np.all(f["A"].max(axis=1) == np.iinfo(np.int32).max)
    assert np.all(f["B"].max(axis=1) > np.iinfo(np.int32).max)
    assert np.all(f["flags"] & FLAG_SATURATED)


def test_long_frames_use_smaller_blocks():
    assert block_frames(4096) == 256 and block_frames(1 << 18) == 4 and block_frames(1 << 22) == 1
    long = dict(samples=1 << 18, channels={"A": "int16"})
    assert source(**long).frames(3, 3).tobytes() == source(**long).frames(0, 6)[3:].tobytes()


# ---- configuration -------------------------------------------------------------------
def test_make_source_dispatches_and_rejects_unknown_kind():
    src = make_source(SyntheticSource(), stream())
    assert isinstance(src, SyntheticPulses) and isinstance(src, Source)
    src.close()
    assert len(src.frames(0, 3)) == 3  # still usable after close
    with pytest.raises(ValueError, match="unknown source kind 'tape'"):    # (replay is a kind now)
        make_source(dataclasses.replace(SyntheticSource(), kind="tape"), stream())


@pytest.mark.parametrize("bad", [
    dict(pretrigger=256), dict(rate=0.0), dict(rate=2e9), dict(decay_ns=0.0), dict(noise=-1.0),
    dict(amplitude=()), dict(amplitude=(Component("gaussian", weight=0.0),)),
])
def test_invalid_configs_are_rejected(bad):
    with pytest.raises(ValueError):
        source(**bad)
