"""coordinator/plots.py: PNG plots of a finished run, from runs made by the real command line."""
from __future__ import annotations

import gc
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import run_json, small_topology, write_topology
from coordinator import plots
from coordinator.plots import write_plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HISTOGRAMS = [{"stage": "histogram", "name": "spectrum", "field": "height", "bins": [0.0, 1.0, 200]},
              {"stage": "histogram", "name": "pulse_time", "field": "time", "edges": [-500, 0, 250, 500, 1000, 2000, 4000]}]
PHA = {"stage": "pha", "channel": "IN1", "height": 0.03, "distance": 8, "prominence": 0.02}


def make_run(folder: Path, pipeline: list[dict], frames: int = 2000) -> Path:
    """A real run of the small synthetic topology, both processing nodes with `pipeline`."""
    folder.mkdir(parents=True, exist_ok=True)
    topo = small_topology(**{"run.frames": frames, "processing.proc1": {"pipeline": pipeline},
                             "processing.proc2": {"pipeline": pipeline}})
    res, summary = run_json(write_topology(folder, topo), timeout=60)
    assert res.returncode == 0 and summary, res.stderr[-3000:]
    return Path(summary["run_dir"])


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> Path:
    """pha, two histograms (uniform bins and explicit edges) and raw data."""
    return make_run(tmp_path_factory.mktemp("full"), [PHA, *HISTOGRAMS, {"stage": "save"}])


@pytest.fixture
def run_copy(full_run, tmp_path) -> Path:
    """A copy of the full run that a test may change."""
    dst = tmp_path / full_run.name
    shutil.copytree(full_run, dst, ignore=shutil.ignore_patterns("plots"))
    return dst


def assert_picture(path: Path) -> None:
    """A PNG that shows something: several colours, not one flat field."""
    from matplotlib.image import imread
    assert path.read_bytes()[:8] == PNG_MAGIC, path
    img = imread(path)
    assert img.ndim == 3 and img.shape[0] > 300 and img.shape[1] > 500
    rgb = (img[..., :3] * 255).round().astype(np.uint32).reshape(-1, 3)
    assert rgb.std() > 10, f"{path.name} is nearly blank"
    colours = np.unique(rgb[:, 0] << 16 | rgb[:, 1] << 8 | rgb[:, 2])
    assert len(colours) > 20, f"{path.name} has too few colours"


def master_histogram(run_dir: Path, name: str, field: str) -> tuple[np.ndarray, np.ndarray, str]:
    with h5py.File(run_dir / "run.h5", "r") as m:
        g = m[f"entry/{name}"]
        return g["counts"][()], g[field][()], g[field].attrs["units"]


def test_writes_one_png_per_histogram_and_one_per_stream(full_run):
    t0 = time.perf_counter()
    written = write_plots(full_run)
    elapsed = time.perf_counter() - t0
    out = full_run / "plots"
    assert sorted(p.name for p in written) == ["pulse_time.png", "spectrum.png", "waveforms-pulses.png"]
    assert all(p.parent == out for p in written)
    for p in written:
        assert_picture(p)
    print(f"write_plots: {len(written)} plots in {elapsed:.2f} s")


def test_plotted_histograms_are_the_master_file_s_sums(full_run):
    hists = plots._histograms(full_run)
    assert set(hists) == {"spectrum", "pulse_time"}
    for spec in HISTOGRAMS:
        counts, edges, units = master_histogram(full_run, spec["name"], spec["field"])
        h = hists[spec["name"]]
        assert h.source == "run.h5" and h.field == spec["field"] and h.units == units
        assert np.array_equal(h.counts, counts) and np.array_equal(h.edges, edges)
        assert counts.sum() > 0
        # the master is the nodes' sum, and so are under- and overflow
        with h5py.File(full_run / "proc1.h5", "r") as a, h5py.File(full_run / "proc2.h5", "r") as b:
            ca, cb = a[f"entry/{spec['name']}/counts"], b[f"entry/{spec['name']}/counts"]
            assert np.array_equal(counts, ca[()] + cb[()])
            assert h.underflow == ca.attrs["underflow"] + cb.attrs["underflow"]
            assert h.overflow == ca.attrs["overflow"] + cb.attrs["overflow"]
            assert h.nodes == 2
        # what the figure draws is exactly that, labelled with the field and its unit
        fig = plots._histogram_figure(h, full_run.name)
        ax = fig.axes[0]
        values, drawn_edges, _ = ax.patches[0].get_data()
        assert np.array_equal(values, counts) and np.array_equal(drawn_edges, edges)
        assert ax.get_xlabel() == f"{spec['field']} ({units})" and ax.get_ylabel() == "counts"
        assert spec["name"] in fig._suptitle.get_text() and full_run.name in fig._suptitle.get_text()
    assert hists["spectrum"].units == "V" and hists["pulse_time"].units == "ns"


def test_waveforms_are_the_first_frames_in_physical_units(full_run):
    w = plots._waveforms(full_run, 4)["pulses"]
    with h5py.File(full_run / "run.h5", "r") as m:
        g = m["entry/pulses"]
        assert w.labels == [f"seq {s}" for s in g["seq"][:4]]
        assert np.array_equal(w.time, g["time"][()]) and w.time_units == "ns"
        assert list(w.channels) == ["IN1", "IN2"]
        for ch, (values, units) in w.channels.items():
            ds = g[ch]
            assert units == ds.attrs["physical_units"] == "V" and ds.attrs["units"] == "counts"
            assert np.allclose(values, ds[:4] * ds.attrs["scale"])
            assert 0.01 < np.abs(values).max() < 2.0          # volts, not ADC counts
    fig = plots._waveform_figure(w, full_run.name)
    assert [ax.get_ylabel() for ax in fig.axes] == ["IN1 (V)", "IN2 (V)"]
    assert fig.axes[-1].get_xlabel() == "time since trigger (ns)"
    line = fig.axes[0].lines[0]
    assert np.array_equal(line.get_xdata(), w.time) and np.array_equal(line.get_ydata(), w.channels["IN1"][0][0])


def test_only_the_plotted_rows_of_waveforms_are_read(full_run, monkeypatch):
    reads = []
    original = h5py.Dataset.__getitem__

    def spy(ds, args, *rest, **kw):
        if ds.ndim == 2:
            reads.append((ds.name, ds.shape, args))
        return original(ds, args, *rest, **kw)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)
    assert plots._waveforms(full_run, 3)["pulses"].source == "run.h5"
    assert plots._from_nodes(full_run, 3, set())["pulses"].source == "node files"
    assert reads
    for name, shape, args in reads:
        sel = args[0] if isinstance(args, tuple) else args
        assert isinstance(sel, slice), (name, args)
        assert len(range(*sel.indices(shape[0]))) <= 3, (name, args)


def test_without_a_master_file_the_node_files_are_summed(full_run, run_copy):
    (run_copy / "run.h5").unlink()
    hists = plots._histograms(run_copy)
    for spec in HISTOGRAMS:
        counts, edges, _ = master_histogram(full_run, spec["name"], spec["field"])
        h = hists[spec["name"]]
        assert h.source == "node files" and h.nodes == 2
        assert np.array_equal(h.counts, counts) and np.array_equal(h.edges, edges)
    w = plots._waveforms(run_copy, 4)["pulses"]
    assert w.source == "node files" and w.labels == ["seq 0", "seq 1", "seq 2", "seq 3"]
    with h5py.File(full_run / "run.h5", "r") as m:
        assert np.allclose(w.channels["IN2"][0], m["entry/pulses/IN2"][:4] * m["entry/pulses/IN2"].attrs["scale"])
    written = write_plots(run_copy)
    assert sorted(p.name for p in written) == ["pulse_time.png", "spectrum.png", "waveforms-pulses.png"]


def test_a_node_file_gone_from_the_run_directory(full_run, run_copy):
    """The master's virtual datasets would read its rows as zeros: the waveforms come from the
    files present, the histograms still from the master (the under/overflow, unknown, left out)."""
    (run_copy / "proc1.h5").unlink()
    w = plots._waveforms(run_copy, 4)["pulses"]
    assert w.source == "node files"
    with h5py.File(run_copy / "proc2.h5", "r") as f:
        own = set(f["entry/pulses/seq"][()].tolist())
    assert all(int(label.split()[-1]) in own for label in w.labels)
    assert all(np.abs(values).max() > 0 for values, _ in w.channels.values())
    h = plots._histograms(run_copy)["spectrum"]
    assert h.source == "run.h5" and h.underflow is None
    assert np.array_equal(h.counts, master_histogram(full_run, "spectrum", "height")[0])
    assert len(write_plots(run_copy)) == 3


def test_figures_are_freed(full_run):
    """Nothing keeps a figure (nor its canvas and pixel buffer) once its file is written."""
    from matplotlib.backend_bases import FigureCanvasBase
    from matplotlib.figure import Figure
    for _ in range(3):
        assert len(write_plots(full_run, waveforms=2)) == 3
    gc.collect()
    assert not [o for o in gc.get_objects() if isinstance(o, (Figure, FigureCanvasBase))]
    if "matplotlib.pyplot" in sys.modules:
        assert not sys.modules["matplotlib.pyplot"].get_fignums()


@pytest.mark.usefixtures("clean_system")
def test_a_run_without_histograms(tmp_path):
    run_dir = make_run(tmp_path, [{"stage": "save"}], frames=500)
    assert plots._histograms(run_dir) == {}
    written = write_plots(run_dir)
    assert [p.name for p in written] == ["waveforms-pulses.png"]
    assert_picture(written[0])


@pytest.mark.usefixtures("clean_system")
def test_a_run_without_raw_waveforms(tmp_path):
    run_dir = make_run(tmp_path, [PHA, HISTOGRAMS[0], {"stage": "save", "data": "reduced"}], frames=500)
    assert plots._waveforms(run_dir, 4) == {}
    written = write_plots(run_dir)
    assert [p.name for p in written] == ["spectrum.png"]
    assert_picture(written[0])


def test_nothing_to_plot(tmp_path):
    assert write_plots(tmp_path / "no-such-run") == []
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "proc1.h5").write_bytes(b"not an HDF5 file")
    assert write_plots(empty) == [] and not (empty / "plots").exists()


def test_file_names_are_safe_and_distinct():
    used: set[str] = set()
    names = [plots._unique(plots._safe(n), used) for n in
             ("spectrum.png", "a b:c*?.png", "a_b_c.png", "../up.png", ".hidden.png", "...png", "Spectrum.png")]
    assert names == ["spectrum.png", "a_b_c.png", "a_b_c-2.png", "up.png", "hidden.png", "unnamed.png",
                     "Spectrum-2.png"]
    assert all("/" not in n and not n.startswith(".") for n in names)


def test_importing_the_module_does_not_import_matplotlib():
    res = subprocess.run([sys.executable, "-c", "import sys, coordinator.plots; "
                          "print('matplotlib' in sys.modules)"], capture_output=True, text=True, timeout=60)
    assert res.stdout.strip() == "False", res.stderr
