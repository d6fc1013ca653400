"""find_peaks_batch: identical to scipy.signal.find_peaks row by row, and finds real pulses.

Equivalence is checked bit for bit (positions, every property array, dtypes) on seeded
batches built to hit find_peaks' corner cases: quantised ADC noise (many equal
neighbours), pile-up, clipping (plateaus), plateaus touching the row ends, peaks at the
first/last samples, rows without pulses, NaN/inf, strided structured-array fields.
"""
from __future__ import annotations

import functools
import inspect
import warnings

import numpy as np
import pytest
from scipy.signal import find_peaks

from procnode.peaks import PEAK_PARAMS, Peaks, find_peaks_batch

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # scipy's PeakPropertyWarning


# ---------------------------------------------------------------------------- data
def _pulse(length: int, rise: float, decay: float) -> np.ndarray:
    t = np.arange(length, dtype=float)
    shape = np.exp(-t / decay) * (-np.expm1(-t / rise) if rise > 0 else 1.0)
    return shape / shape.max()


def adc_like(seed: int, n: int, S: int, *, base: float = 100.0, sigma: float = 3.0,
             amp: float = 400.0, clip: float = 1900.0, dtype=np.int16) -> np.ndarray:
    """Integer ADC-like waveforms: quantised noise, exponential pulses with pile-up,
    clipping at base + clip, hand-made plateaus and edge peaks, some rows without pulses."""
    rng = np.random.default_rng(seed)
    x = base + sigma * rng.standard_normal((n, S))
    shape = _pulse(64, 1.5, 8.0)
    for i in range(n):
        if i % 7 == 3:
            continue                                  # no pulse at all
        k = rng.poisson(5)
        starts = list(rng.integers(-10, S - 2, k))
        if k and i % 3 == 0:                          # pile-up: a second pulse close by
            starts.append(starts[0] + int(rng.integers(2, 30)))
        for s0 in starts:
            a = rng.exponential(amp) + (3 * amp if rng.random() < 0.2 else 0.0)
            lo, hi = max(s0, 0), min(s0 + shape.size, S)
            if lo < hi:
                x[i, lo:hi] += a * shape[lo - s0: hi - s0]
    x = np.minimum(x, base + clip)                    # saturation: flat tops
    # hand-made plateaus, odd and even lengths, some at the row ends
    for i in range(0, n, 4):
        p = int(rng.integers(1, max(2, S - 8)))
        w = int(rng.integers(2, 7))
        x[i, p: p + w] = base + 20 * sigma
    for i in range(1, n, 5):
        x[i, -3:] = base + 15 * sigma                 # plateau touching the last sample
    for i in range(2, n, 6):
        x[i, 0] = base + 30 * sigma                   # would-be peaks at the row ends
        x[i, -1] = base + 30 * sigma
    x = np.rint(x)
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        x = np.clip(x, info.min, info.max)
    return x.astype(dtype)


def float_like(seed: int, n: int, S: int, dtype) -> np.ndarray:
    """Continuous waveforms, with some exact repeats (plateaus) and clipping."""
    x = adc_like(seed, n, S, dtype=np.int32).astype(np.float64)
    rng = np.random.default_rng(seed + 1)
    x += rng.uniform(-0.5, 0.5, x.shape) * (rng.random(x.shape) < 0.7)  # 30 % stay integers
    return x.astype(dtype)


def records_view(x: np.ndarray) -> np.ndarray:
    """x as the IN1 field of frame records (header, IN1, IN2): rows are strided."""
    n, S = x.shape
    dt = np.dtype([("seq", "<u8"), ("timestamp", "<u8"), ("flags", "<u4"), ("reserved", "<u4"),
                   ("IN1", x.dtype, (S,)), ("IN2", x.dtype, (S,))])
    rec = np.zeros(n, dt)
    rec["IN1"] = x
    rec["IN2"] = x[::-1]
    view = rec["IN1"]
    assert view.strides[0] == dt.itemsize and (n == 1 or not view.flags.c_contiguous)
    return view


def special_floats(seed: int) -> np.ndarray:
    """NaN, +-inf, inf plateaus, -0.0/0.0 mixtures."""
    x = float_like(seed, 24, 300, np.float64)
    rng = np.random.default_rng(seed)
    for i in range(24):
        for _ in range(3):
            x[i, rng.integers(0, 300)] = rng.choice([np.nan, np.inf, -np.inf])
    x[0, 10:13] = np.inf
    x[1, 50:52] = np.nan
    x[2, 100:104] = [0.0, -0.0, 0.0, -0.0]
    x[2, 99] = x[2, 104] = -1.0
    return x


@functools.lru_cache(maxsize=None)
def dataset(name: str) -> tuple[np.ndarray, dict]:
    """(batch, scale) for one named data set; scale gives base, sigma, amp for parameters."""
    adc = {"base": 100.0, "sigma": 3.0, "amp": 400.0}
    if name == "int16":
        return adc_like(1, 40, 1024), adc
    if name == "int16_quiet":       # sub-count noise: equal neighbours everywhere
        return adc_like(2, 30, 700, sigma=0.4), {**adc, "sigma": 1.0}
    if name == "int16_records":     # strided field view, rows a multiple of 8 long
        return records_view(adc_like(3, 32, 512)), adc
    if name == "int16_records_odd":  # strided field view, 1001 samples (words straddle rows)
        return records_view(adc_like(4, 20, 1001)), adc
    if name == "int16_sliced":      # non-contiguous samples: copied internally
        return adc_like(5, 20, 1200)[:, ::2], adc
    if name == "int16_reversed":    # negative row stride
        return adc_like(6, 20, 600)[::-1], adc
    if name == "uint16":
        return adc_like(7, 20, 800, base=1000.0, dtype=np.uint16), {**adc, "base": 1000.0}
    if name == "int32":
        return adc_like(8, 20, 900, base=-5000.0, sigma=30.0, amp=4000.0, clip=30000.0,
                        dtype=np.int32), {"base": -5000.0, "sigma": 30.0, "amp": 4000.0}
    if name == "float32":
        return float_like(9, 24, 777, np.float32), adc
    if name == "float64":
        return float_like(10, 24, 640, np.float64), adc
    if name == "float32_records":
        return records_view(float_like(11, 16, 400, np.float32)), adc
    if name == "float64_special":
        return special_floats(12), adc
    raise KeyError(name)


DATASETS = ["int16", "int16_quiet", "int16_records", "int16_records_odd", "int16_sliced",
            "int16_reversed", "uint16", "int32", "float32", "float64", "float32_records",
            "float64_special"]


def param_grid(base: float, sigma: float, amp: float) -> dict[str, dict]:
    """Parameter combinations, scaled to the data."""
    h = base + 5 * sigma
    return {
        "height": {"height": h},
        "height_low": {"height": base + 1.5 * sigma},   # dense candidates
        "height_high": {"height": base + 150 * sigma},  # sparse candidates
        "height_int_edge": {"height": int(h)},
        "height_float_between": {"height": h + 0.37},
        "height_minmax": {"height": (h, base + amp)},
        "height_max_only": {"height": (None, base + amp)},
        "height_none_none": {"height": (None, None)},
        "height_below_all": {"height": -1e300},
        "height_above_all": {"height": 1e300},
        "height_threshold": {"height": h, "threshold": sigma},
        "threshold_minmax": {"threshold": (0.5 * sigma, 40 * sigma)},
        "threshold_max_only": {"threshold": (None, sigma)},
        "height_distance_2.5": {"height": h, "distance": 2.5},
        "height_distance_20": {"height": h, "distance": 20},
        "height_distance_60": {"height": base + 2 * sigma, "distance": 60},
        "distance_only": {"distance": 4},
        "prominence": {"prominence": 4 * sigma},
        "prominence_wlen": {"prominence": 4 * sigma, "wlen": 21},
        "prominence_wlen_float": {"prominence": (2 * sigma, 100 * sigma), "wlen": 6.5},
        "prominence_wlen_2": {"prominence": 0, "wlen": 2},
        "height_prominence": {"height": h, "prominence": (None, 60 * sigma)},
        "width": {"height": h, "width": 2},
        "width_rel_0.25": {"height": h, "width": (1, 12), "rel_height": 0.25},
        "width_rel_1": {"height": h, "width": 0, "rel_height": 1.0},
        "width_rel_0": {"height": h, "width": 0, "rel_height": 0.0},
        "prominence_width_wlen": {"prominence": 2 * sigma, "width": (None, 10), "wlen": 31},
        "plateau_size": {"plateau_size": 2},
        "plateau_size_minmax": {"plateau_size": (1, 3)},
        "height_plateau": {"height": base + 3 * sigma, "plateau_size": (2, None)},
        "none": {},
        "everything": {"height": (base, None), "threshold": (0, 30 * sigma), "distance": 3,
                       "prominence": sigma, "width": 1, "wlen": 41, "rel_height": 0.6,
                       "plateau_size": (1, 4)},
    }


# ---------------------------------------------------------------------------- comparison
def reference(x: np.ndarray, kw: dict) -> Peaks:
    """scipy.signal.find_peaks per row, concatenated."""
    rows, pos, props = [], [], {}
    for i in range(x.shape[0]):
        p, pr = find_peaks(x[i], **kw)
        rows.append(np.full(p.size, i, np.int64))
        pos.append(p)
        for k, v in pr.items():
            props.setdefault(k, []).append(v)
    return Peaks(np.concatenate(rows), np.concatenate(pos),
                 {k: np.concatenate(v) for k, v in props.items()})


def assert_identical(got: Peaks, want: Peaks, what: str = "") -> None:
    assert got.row.dtype == np.int64 and got.position.dtype == np.int64, what
    assert np.array_equal(got.row, want.row), f"{what}: rows differ"
    assert np.array_equal(got.position, want.position), f"{what}: positions differ"
    assert list(got.properties) == list(want.properties), what
    for k, v in want.properties.items():
        g = got.properties[k]
        assert g.dtype == v.dtype, f"{what}: {k} dtype {g.dtype} != {v.dtype}"
        assert g.tobytes() == v.tobytes(), f"{what}: {k} differs"  # bit for bit


def _grid_cases():
    for ds in DATASETS:
        for pname in param_grid(0, 1, 1):
            yield pytest.param(ds, pname, id=f"{ds}-{pname}")


@pytest.mark.parametrize("ds,pname", list(_grid_cases()))
def test_identical_to_scipy(ds: str, pname: str) -> None:
    x, scale = dataset(ds)
    kw = param_grid(**scale)[pname]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = reference(x, kw)
        for method in ("auto", "vector", "scipy"):
            assert_identical(find_peaks_batch(x, method=method, **kw), want, f"{ds} {pname} {method}")


def test_grid_exercises_the_interesting_paths() -> None:
    """The data really contains what the equivalence tests are about."""
    x, scale = dataset("int16")
    ref = reference(x, {"plateau_size": 2, "height": scale["base"] + 5 * scale["sigma"]})
    assert len(ref) > 20                                       # plateau peaks, even and odd
    assert {0, 1} <= set((ref.properties["plateau_sizes"] % 2).tolist())
    close = reference(x, {"height": scale["base"] + 5 * scale["sigma"]})
    gaps = np.diff(close.position)[np.diff(close.row) == 0]
    assert (gaps < 20).sum() > 10                              # distance=20 removes peaks
    assert (reference(x, {}).row == 3).sum() > 0               # noise peaks in a pulse-free row
    assert not np.isin(3, reference(x, {"height": scale["base"] + 8 * scale["sigma"]}).row)


@pytest.mark.parametrize("seed", range(12))
def test_random_batches(seed: int) -> None:
    """Random shapes, dtypes, layouts and parameters."""
    rng = np.random.default_rng(1000 + seed)
    dtype = [np.int16, np.int32, np.uint16, np.int8, np.float32, np.float64][seed % 6]
    n, S = int(rng.integers(1, 30)), int(rng.integers(3, 700))
    sigma = float(rng.choice([0.3, 1.0, 4.0]))
    x = adc_like(seed, n, S, base=0.0 if dtype != np.uint16 else 500.0, sigma=sigma,
                 amp=float(rng.choice([10.0, 100.0])), clip=120.0, dtype=np.int32)
    if np.dtype(dtype).kind in "iu":
        x = np.clip(x, np.iinfo(dtype).min, np.iinfo(dtype).max)
    x = x.astype(dtype)
    if seed % 4 == 1:
        x = records_view(x)
    base = 500.0 if dtype == np.uint16 else 0.0
    for _ in range(6):
        kw = {}
        if rng.random() < 0.7:
            kw["height"] = base + float(rng.uniform(-2, 20)) * sigma
        if rng.random() < 0.3:
            kw["threshold"] = (float(rng.uniform(0, 2)) * sigma, None)
        if rng.random() < 0.4:
            kw["distance"] = float(rng.choice([1, 1.5, 3, 8, 25]))
        if rng.random() < 0.4:
            kw["prominence"] = float(rng.uniform(0, 10)) * sigma
            if rng.random() < 0.5:
                kw["wlen"] = int(rng.integers(2, 60))
        if rng.random() < 0.3:
            kw["width"] = (float(rng.uniform(0, 3)), None)
            kw["rel_height"] = float(rng.choice([0.0, 0.3, 0.5, 0.9, 1.0, 2.0]))
        if rng.random() < 0.2:
            kw["plateau_size"] = (1, int(rng.integers(1, 5)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            want = reference(x, kw)
            for method in ("auto", "vector"):
                assert_identical(find_peaks_batch(x, method=method, **kw), want, f"{kw} {method}")


@pytest.mark.parametrize("scipy_step", [True, False])
def test_distance_with_tied_heights_and_long_chains(scipy_step: bool, monkeypatch) -> None:
    """Equal heights within distance (scipy's argsort order decides) and rows with many
    mutually close peaks (resolved row by row: by scipy's distance step in `auto`, or,
    without it, by find_peaks for those rows) still match."""
    import procnode.peaks as peaks
    if not scipy_step:
        monkeypatch.setattr(peaks, "_select_by_peak_distance", None)
    rng = np.random.default_rng(5)
    x = rng.integers(0, 4, (30, 400)).astype(np.int16)       # heights tie all the time
    x[:5] = np.tile(np.array([0, 5, 0, 5, 0, 5, 0, 5], np.int16), 50)  # equal peaks 2 apart
    x[5, 1::2] = np.arange(200)                              # a monotone chain of peaks
    for d in (2, 3, 9, 40, 150):
        for h in (None, 1, 3):
            want = reference(x, {"distance": d, "height": h})
            for method in ("auto", "vector"):
                assert_identical(find_peaks_batch(x, distance=d, height=h, method=method), want,
                                 f"d={d} h={h} {method}")


@pytest.mark.parametrize("S", [1001, 1003, 1024])
def test_peaks_next_to_row_ends_in_strided_rows(S: int) -> None:
    """Sparse candidates in the first and last 8 samples of strided rows whose length is
    not a multiple of 8 (the mask words then straddle rows)."""
    rng = np.random.default_rng(S)
    x = rng.integers(0, 3, (40, S)).astype(np.int16)
    for i in range(40):
        for c in (1 + i % 7, S - 2 - i % 7, S // 2):
            x[i, c] = 100 + i
        if i % 3 == 0:
            x[i, 2:4] = 90                                   # plateau near the start
            x[i, S - 4:S - 2] = 90                           # plateau near the end
    view = records_view(x)
    for kw in ({"height": 50}, {"height": 50, "prominence": 1, "width": 0}):
        want = reference(x, kw)
        for data in (x, view):
            assert_identical(find_peaks_batch(data, method="vector", **kw), want, f"S={S} {kw}")


def test_edges_and_degenerate_shapes() -> None:
    for S in (0, 1, 2, 3, 4):
        x = np.arange(5 * S, dtype=np.int16).reshape(5, S) % 3
        for kw in ({}, {"height": 1}, {"prominence": 0, "width": 0}, {"plateau_size": 1}):
            want = reference(x, kw)
            for method in ("auto", "vector"):
                assert_identical(find_peaks_batch(x, method=method, **kw), want, f"S={S} {kw}")
    empty = find_peaks_batch(np.zeros((0, 100), np.int16), height=1, width=2)
    assert len(empty) == 0 and empty.row.dtype == np.int64
    assert list(empty.properties) == ["peak_heights", "prominences", "left_bases", "right_bases",
                                      "widths", "width_heights", "left_ips", "right_ips"]
    assert empty.properties["left_bases"].dtype == np.intp
    flat = np.full((3, 50), 7, np.int16)
    assert len(find_peaks_batch(flat)) == 0 and len(find_peaks_batch(flat, height=7)) == 0


def test_plateaus_exactly() -> None:
    """Plateau midpoints (rounded down), plateaus at the ends, descending into plateaus."""
    rows = [
        [0, 1, 1, 0, 2, 2, 2, 2, 0, 3, 3, 3, 0],
        [0, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5],   # reaches the last sample: no peak
        [5, 5, 5, 1, 2, 2, 3, 3, 1, 4, 4, 4, 1],   # starts at the first sample: no peak
        [0, 2, 2, 1, 1, 3, 0, 3, 3, 3, 3, 2, 2],
    ]
    x = np.array(rows, np.int16)
    for kw in ({}, {"height": 2}, {"plateau_size": (2, None), "height": 0}):
        want = reference(x, kw)
        got = find_peaks_batch(x, method="vector", **kw)
        assert_identical(got, want, str(kw))
    got = find_peaks_batch(x, method="vector", plateau_size=1)
    assert got.position[got.row == 0].tolist() == [1, 5, 10]
    assert got.row.tolist().count(1) == 0


def test_parameters_like_find_peaks() -> None:
    x, _ = dataset("int16")
    with pytest.raises(ValueError, match="distance"):
        find_peaks_batch(x, distance=0.5)
    with pytest.raises(ValueError, match="wlen"):
        find_peaks_batch(x, prominence=1, wlen=1)
    with pytest.raises(ValueError, match="rel_height"):
        find_peaks_batch(x, width=1, rel_height=-0.1)
    with pytest.raises(ValueError, match="method"):
        find_peaks_batch(x, method="fast")
    with pytest.raises(ValueError, match="2-D"):
        find_peaks_batch(x[0])
    assert PEAK_PARAMS == tuple(inspect.signature(find_peaks).parameters)[1:]


def test_what_vector_cannot_do_goes_to_scipy_in_auto() -> None:
    """Per-sample condition arrays and 64-bit integers: ValueError in vector, scipy in auto."""
    x, _ = dataset("int16")
    per_sample = np.linspace(100, 200, x.shape[1])
    for kw, data in (({"height": per_sample}, x), ({"height": (per_sample, None)}, x),
                     ({"threshold": per_sample * 0 + 2}, x), ({"height": 115}, x.astype(np.int64)),
                     ({"height": 115, "distance": np.inf}, x)):
        with pytest.raises(ValueError, match="method='vector'"):
            find_peaks_batch(data, method="vector", **kw)
        assert_identical(find_peaks_batch(data, method="auto", **kw), reference(data, kw), str(kw))


@pytest.mark.parametrize("ds", ["int16_records", "int16_records_odd", "float32_records"])
def test_strided_fields_are_read_in_place(ds: str) -> None:
    """A records["IN1"] view is not copied: all reads go through one view of its memory."""
    import procnode.peaks as peaks
    x, _ = dataset(ds)
    span, rs = peaks._span(x)
    assert np.shares_memory(span, x) and rs * x.itemsize == x.strides[0]
    assert span[rs + 5] == x[1, 5] and span[(x.shape[0] - 1) * rs + x.shape[1] - 1] == x[-1, -1]


def test_peaks_container() -> None:
    x, scale = dataset("int16")
    got = find_peaks_batch(x, height=scale["base"] + 5 * scale["sigma"])
    assert len(got) == got.position.size == got.row.size > 0
    key = got.row * x.shape[1] + got.position
    assert np.all(np.diff(key) > 0)                           # ordered by (row, position)


# ---------------------------------------------------------------------------- physics
def known_pulses(seed: int, n: int = 64, S: int = 4096, sigma: float = 2.0, base: float = 50.0,
                 rise: float = 2.0, decay: float = 8.0):
    """Waveforms with well separated pulses of known position and amplitude, int16."""
    rng = np.random.default_rng(seed)
    shape = _pulse(120, rise, decay)
    top = int(np.argmax(shape))
    x = base + sigma * rng.standard_normal((n, S))
    truth = []
    for i in range(n):
        k = int(rng.integers(0, 8))
        # separated by >= 200 samples, clear of the row ends
        slots = rng.choice(np.arange(1, S // 200 - 1), size=k, replace=False)
        starts = np.sort(slots * 200 + rng.integers(0, 50, k))
        amps = rng.uniform(500, 3000, k)
        for s0, a in zip(starts, amps):
            x[i, s0: s0 + shape.size] += a * shape
        truth.append((starts + top, amps))
    return np.rint(x).astype(np.int16), truth, base, sigma


@pytest.mark.parametrize("view", ["plain", "records"])
def test_physics_every_pulse_found_with_its_height(view: str) -> None:
    x, truth, base, sigma = known_pulses(21)
    if view == "records":
        x = records_view(x)
    h = base + 50 * sigma                       # noise stays far below the threshold
    got = find_peaks_batch(x, height=h, prominence=0, width=0)
    for i, (where, amps) in enumerate(truth):
        sel = got.row == i
        pos = got.position[sel]
        assert pos.size == where.size, f"row {i}: {pos.size} peaks for {where.size} pulses"
        assert np.all(np.abs(pos - where) <= 2)
        heights = got.properties["peak_heights"][sel]
        assert np.all(np.abs(heights - (base + amps)) < 5 * sigma)
        prom = got.properties["prominences"][sel]
        assert np.all(np.abs(prom - amps) < 10 * sigma)  # from the noise minima beside it
        assert np.all(got.properties["widths"][sel] > 2)
    # pulse-free rows give no peaks at all
    assert not np.isin([i for i, (w, _) in enumerate(truth) if w.size == 0], got.row).any()


def test_physics_no_peaks_from_noise_below_threshold() -> None:
    x, truth, base, sigma = known_pulses(22, n=32)
    noise_only = np.rint(base + sigma * np.random.default_rng(3).standard_normal(x.shape))
    assert len(find_peaks_batch(noise_only.astype(np.int16), height=base + 8 * sigma)) == 0
    # with pulses: one peak per pulse (the tails fall steeply through this threshold)
    got = find_peaks_batch(x, height=base + 50 * sigma)
    assert len(got) == sum(w.size for w, _ in truth)
