"""Quick-look PNG plots of a finished run: `<run dir>/plots/`.

    plots/<histogram>.png          every histogram, summed over the processing nodes: from the
                                   master file `run.h5` when there is one, else summed over the
                                   node files; a step histogram, x labelled with the field and
                                   the unit of its bin edges
    plots/waveforms-<stream>.png   the first few saved frames of each raw stream (master order:
                                   module by module, by seq), one panel per channel, in physical
                                   units (stored value x `scale`) against the `time` axis

Layout read: see procnode/hdf5sink.py and coordinator/master.py.  Only the rows plotted are
read from waveform datasets.  matplotlib is imported on the first call, not with this module,
and figures are made with the object API (`Figure`, no pyplot): nothing global holds them, so
each is freed once written.  A plot that cannot be made is logged and skipped; `write_plots`
never raises because of a run's contents.
"""
from __future__ import annotations

import logging
import re
import sys
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from coordinator.rundir import MASTER_FILE

log = logging.getLogger("coordinator")

PLOTS_DIR = "plots"
DPI = 110
SCAN_ROWS = 1 << 16      # rows of a node file's seq and module columns searched for the first frames


@dataclass
class _Histogram:
    """One histogram as plotted: counts (bins,) over edges (bins + 1,)."""
    name: str
    field: str
    units: str
    edges: np.ndarray
    counts: np.ndarray
    source: str                                 # "run.h5" or "node files"
    nodes: int = 0                              # node files summed (0: unknown)
    underflow: int | None = None                # summed over the nodes; None: not known
    overflow: int | None = None


@dataclass
class _Waveforms:
    """The first frames of one stream as plotted: per channel (frames, samples) in `units`."""
    stream: str
    time: np.ndarray
    time_units: str
    labels: list[str]
    channels: dict[str, tuple[np.ndarray, str]] = field(default_factory=dict)
    source: str = ""


def write_plots(run_dir: Path, waveforms: int = 4) -> list[Path]:
    """PNG plots of the run in `run_dir` into `run_dir/plots/`; returns the files written
    (possibly none: a run without histograms nor raw waveforms, or no HDF5 file at all)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        log.warning("plots: no run directory %s", run_dir)
        return []
    try:
        hists = _histograms(run_dir)
    except Exception as exc:      # an unreadable master or node file: log, plot what else we can
        log.warning("plots: could not read the histograms of %s: %s", run_dir, exc)
        hists = {}
    try:
        waves = _waveforms(run_dir, waveforms) if waveforms > 0 else {}
    except Exception as exc:
        log.warning("plots: could not read the waveforms of %s: %s", run_dir, exc)
        waves = {}
    if not hists and not waves:
        return []
    try:
        import matplotlib
        if "matplotlib.pyplot" not in sys.modules:   # else leave the host's backend (switching closes its figures)
            matplotlib.use("Agg")
    except ImportError as exc:
        log.warning("plots: matplotlib is not available (%s); no plots", exc)
        return []
    out_dir = run_dir / PLOTS_DIR
    out_dir.mkdir(exist_ok=True)
    used: set[str] = set()
    written = []
    jobs = [(f"{name}.png", _histogram_figure, h, run_dir.name) for name, h in hists.items()]
    jobs += [(f"waveforms-{name}.png", _waveform_figure, w, run_dir.name) for name, w in waves.items()]
    for filename, make, data, run in jobs:
        path = out_dir / _unique(_safe(filename), used)
        fig = None
        try:
            fig = make(data, run)
            fig.savefig(path, dpi=DPI)
            written.append(path)
        except Exception as exc:
            log.warning("plots: %s not written: %s", path.name, exc, exc_info=True)
        finally:
            if fig is not None:
                fig.clear()      # drop the artists now rather than at the next collection
    return written


# --- reading ---------------------------------------------------------------------------------

def _open(path: Path) -> h5py.File:
    """Read-only; a node file in SWMR mode (possibly left by a dead writer) as an SWMR reader."""
    try:
        return h5py.File(path, "r", libver="latest", swmr=True)
    except OSError:
        return h5py.File(path, "r")


def _node_files(run_dir: Path) -> list[Path]:
    return sorted(p for p in run_dir.glob("*.h5") if p.name != MASTER_FILE)


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, np.ndarray) and value.size == 1:
        return _text(value.reshape(-1)[0])
    return "" if value is None else str(value)


def _texts(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (str, bytes)):
        return [_text(value)]
    return [_text(v) for v in np.asarray(value).reshape(-1)]


def _is_histogram(g: Any) -> bool:
    """NXdata whose signal is a 1-D `counts` (a histogram of the field `seq` has a `seq` dataset:
    its bin edges; without a `signal` attribute, a group with `seq` is taken for a stream)."""
    if not isinstance(g, h5py.Group) or _text(g.attrs.get("NX_class")) != "NXdata":
        return False
    counts = g.get("counts")
    if not isinstance(counts, h5py.Dataset) or counts.ndim != 1:
        return False
    signal = _text(g.attrs.get("signal"))
    return signal == "counts" if signal else "seq" not in g


def _histogram_groups(entry: h5py.Group) -> dict[str, h5py.Group]:
    """name -> group of every histogram in /entry."""
    return {name: entry[name] for name in entry if _is_histogram(entry.get(name))}


def _edges_of(g: h5py.Group) -> tuple[str, np.ndarray, str] | None:
    """(field, bin edges, unit) of a histogram group: the axis named in `axes`, else the one
    1-D dataset one longer than `counts`."""
    n = g["counts"].shape[0] if g["counts"].ndim == 1 else -1
    names = _texts(g.attrs.get("axes")) + [k for k in g if k != "counts"]
    for name in names:
        ds = g.get(name)
        if isinstance(ds, h5py.Dataset) and ds.ndim == 1 and ds.shape[0] == n + 1:
            return name, ds[()].astype(np.float64), _text(ds.attrs.get("units"))
    return None


def _node_sums(run_dir: Path) -> dict[str, _Histogram]:
    """Every histogram of the node files, summed over the files whose bin edges agree with the first."""
    out: dict[str, _Histogram] = {}
    for path in _node_files(run_dir):
        try:
            with _open(path) as f:
                entry = f.get("entry")
                if entry is None:
                    continue
                for name, g in _histogram_groups(entry).items():
                    axis = _edges_of(g)
                    if axis is None:
                        continue
                    fname, edges, units = axis
                    c = g["counts"]
                    counts = c[()].astype(np.int64)
                    under, over = c.attrs.get("underflow"), c.attrs.get("overflow")
                    h = out.get(name)
                    if h is None:
                        out[name] = _Histogram(name, fname, units, edges, counts, "node files", 1,
                                               None if under is None else int(under),
                                               None if over is None else int(over))
                    elif h.edges.shape == edges.shape and np.array_equal(h.edges, edges):
                        h.counts = h.counts + counts
                        h.nodes += 1
                        h.underflow = None if h.underflow is None or under is None else h.underflow + int(under)
                        h.overflow = None if h.overflow is None or over is None else h.overflow + int(over)
                    else:
                        log.warning("plots: histogram %s of %s has other bins than the first file's; "
                                    "left out", name, path.name)
        except (OSError, KeyError) as exc:
            log.warning("plots: %s not readable: %s", path.name, exc)
    return out


def _histograms(run_dir: Path) -> dict[str, _Histogram]:
    """name -> histogram summed over the nodes: the master file's sums when it has them, else
    the node files' own (also for a histogram the master file lacks)."""
    nodes = _node_sums(run_dir)
    out: dict[str, _Histogram] = {}
    master = run_dir / MASTER_FILE
    if master.exists():
        try:
            with h5py.File(master, "r") as f:
                entry = f.get("entry")
                for name, g in (_histogram_groups(entry) if entry is not None else {}).items():
                    axis = _edges_of(g)
                    if axis is None:
                        continue
                    fname, edges, units = axis
                    h = _Histogram(name, fname, units, edges, g["counts"][()].astype(np.int64), MASTER_FILE)
                    # The master copies the counts' attributes of one node only: take under- and
                    # overflow from the node files, when their counts add up to the master's.
                    n = nodes.get(name)
                    if n is not None and np.array_equal(n.counts, h.counts) and np.array_equal(n.edges, h.edges):
                        h.nodes, h.underflow, h.overflow = n.nodes, n.underflow, n.overflow
                    out[name] = h
        except (OSError, KeyError) as exc:
            log.warning("plots: %s not readable (%s); histograms from the node files", master, exc)
            out = {}
    for name, h in nodes.items():        # no master, or a histogram it could not hold
        out.setdefault(name, h)
    return out


def _stream_groups(entry: h5py.Group) -> dict[str, h5py.Group]:
    """name -> raw waveform group (NXdata with seq, module and a time axis)."""
    out = {}
    for name in entry:
        g = entry.get(name)
        if isinstance(g, h5py.Group) and _text(g.attrs.get("NX_class")) == "NXdata" \
                and "seq" in g and "module" in g and "time" in g and not _is_histogram(g):
            out[name] = g
    return out


def _channels(g: h5py.Group) -> list[str]:
    """The waveform datasets of a stream group: signal and auxiliary signals, else every 2-D one."""
    samples = g["time"].shape[0]
    named = [_text(g.attrs.get("signal"))] + _texts(g.attrs.get("auxiliary_signals"))
    if not any(named):
        named = list(g)
    out = []
    for ch in named:
        ds = g.get(ch) if ch else None
        if isinstance(ds, h5py.Dataset) and ds.ndim == 2 and ds.shape[1] == samples and ch not in out:
            out.append(ch)
    return out


def _rows(g: h5py.Group, channels: list[str]) -> int:
    """Rows readable in every column (a crashed writer may leave them of different lengths)."""
    return min([g["seq"].shape[0], g["module"].shape[0], *(g[ch].shape[0] for ch in channels)])


def _physical(ds: h5py.Dataset, rows: Any) -> tuple[np.ndarray, str]:
    """Those rows of a waveform dataset in its physical unit (stored value x scale)."""
    raw = ds[rows]
    scale = ds.attrs.get("scale")
    units = _text(ds.attrs.get("units"))
    physical = _text(ds.attrs.get("physical_units"))
    if scale is None:
        return raw.astype(np.float64), units
    if float(scale) != 1.0 and not physical:      # a scale to an unnamed unit: show what is stored
        return raw.astype(np.float64), units
    return raw.astype(np.float64) * float(scale), physical or units


def _labels(seq: np.ndarray, module: np.ndarray, names: list[str]) -> list[str]:
    several = len(set(module.tolist())) > 1 or len(names) > 1
    out = []
    for s, m in zip(seq.tolist(), module.tolist()):
        who = names[m] if 0 <= m < len(names) else f"module {m}"
        out.append(f"{who} seq {s}" if several else f"seq {s}")
    return out


def _time_axis(g: h5py.Group) -> tuple[np.ndarray, str]:
    t = g["time"]
    return t[()].astype(np.float64), _text(t.attrs.get("units")) or "ns"


def _master_sources_present(f: h5py.File, run_dir: Path) -> bool:
    """Whether every node file the master links is here (virtual datasets read a missing
    source as zeros, which would plot as flat lines)."""
    nodes = f.get("entry/nodes")
    if nodes is None:
        return False
    for name in nodes:
        link = nodes.get(name, getlink=True)
        if isinstance(link, h5py.ExternalLink) and not (run_dir / link.filename).exists():
            return False
    return True


def _from_master(f: h5py.File, run_dir: Path, n: int) -> dict[str, _Waveforms]:
    out = {}
    entry = f.get("entry")
    if entry is None or not _master_sources_present(f, run_dir):
        return out
    for name, g in _stream_groups(entry).items():
        channels = _channels(g)
        k = min(n, _rows(g, channels)) if channels else 0
        if k == 0 or "order" in g:      # `order`: rows in file order, not (module, seq); use the node files
            continue
        time_, tunits = _time_axis(g)
        w = _Waveforms(name, time_, tunits, _labels(g["seq"][:k], g["module"][:k],
                                                     _texts(g["module"].attrs.get("names"))), source=MASTER_FILE)
        for ch in channels:
            w.channels[ch] = _physical(g[ch], np.s_[:k])
        out[name] = w
    return out


def _from_nodes(run_dir: Path, n: int, skip: set[str]) -> dict[str, _Waveforms]:
    """Per stream, the n first (module, seq) of the node files (among the first SCAN_ROWS rows of
    each: a node writes in arrival order, module by module per batch, so roughly by seq)."""
    with ExitStack() as stack:
        found: dict[str, list[tuple[int, int, int, int]]] = {}     # stream -> (module, seq, file, row)
        groups: list[dict[str, h5py.Group]] = []
        for i, path in enumerate(_node_files(run_dir)):
            streams: dict[str, h5py.Group] = {}
            try:
                f = stack.enter_context(_open(path))
                entry = f.get("entry")
                for name, g in (_stream_groups(entry) if entry is not None else {}).items():
                    channels = _channels(g)
                    if name in skip or not channels:
                        continue
                    k = min(SCAN_ROWS, _rows(g, channels))
                    module, seq = g["module"][:k], g["seq"][:k]
                    first = np.lexsort((seq, module))[:n]         # this file's n first (module, seq)
                    found.setdefault(name, []).extend(
                        (int(module[r]), int(seq[r]), i, int(r)) for r in first)
                    streams[name] = g
            except (OSError, KeyError, ValueError) as exc:
                log.warning("plots: %s not readable: %s", path.name, exc)
            groups.append(streams)
        out = {}
        for name, rows in found.items():
            try:
                out[name] = _gather(name, sorted(rows)[:n], groups)
            except (OSError, KeyError, ValueError) as exc:
                log.warning("plots: waveforms of %s not gathered: %s", name, exc)
        return out


def _gather(name: str, rows: list[tuple[int, int, int, int]], groups: list[dict[str, h5py.Group]]) -> _Waveforms:
    """The rows (module, seq, file, row) of stream `name` from the node files' groups."""
    first = groups[rows[0][2]][name]
    time_, tunits = _time_axis(first)
    w = _Waveforms(name, time_, tunits, _labels(np.array([r[1] for r in rows]), np.array([r[0] for r in rows]),
                                                 _texts(first["module"].attrs.get("names"))), source="node files")
    for ch in _channels(first):
        parts, units = [], ""
        for _, _, i, row in rows:
            ds = groups[i][name].get(ch)
            if ds is None or ds.shape[1:] != first[ch].shape[1:]:
                raise ValueError(f"{name}/{ch} differs between node files")
            values, units = _physical(ds, np.s_[row:row + 1])
            parts.append(values)
        w.channels[ch] = (np.concatenate(parts), units)
    return w


def _waveforms(run_dir: Path, n: int) -> dict[str, _Waveforms]:
    """stream -> its first n saved frames: from the master file, else from the node files."""
    out: dict[str, _Waveforms] = {}
    master = run_dir / MASTER_FILE
    if master.exists():
        try:
            with h5py.File(master, "r") as f:
                out = _from_master(f, run_dir, n)
        except (OSError, KeyError, ValueError) as exc:
            log.warning("plots: waveforms of %s not readable (%s); from the node files", master, exc)
            out = {}
    out.update(_from_nodes(run_dir, n, set(out)))
    return out


# --- drawing ---------------------------------------------------------------------------------

def _safe(filename: str) -> str:
    """A file name without separators or shell-awkward characters, not hidden, not too long."""
    stem, dot, ext = filename.rpartition(".")
    stem = re.sub(r"[^A-Za-z0-9._+-]+", "_", stem).strip("._") or "unnamed"
    return f"{stem[:120]}{dot}{ext}"


def _unique(filename: str, used: set[str]) -> str:
    stem, dot, ext = filename.rpartition(".")
    name, k = filename, 1
    while name.lower() in used:
        k += 1
        name = f"{stem}-{k}{dot}{ext}"
    used.add(name.lower())
    return name


def _label(name: str, units: str) -> str:
    return f"{name} ({units})" if units else name


def _margins(fig: Any, left: float = 0.95, right: float = 0.3, bottom: float = 0.6, top: float = 0.62,
             hspace: float = 0.2) -> None:
    """Fixed margins in inches (room for 7-character tick labels, the axis labels and two title
    lines): a constrained layout would cost about as much time as drawing the figure."""
    w, h = fig.get_size_inches()
    fig.subplots_adjust(left=left / w, right=1 - right / w, bottom=bottom / h, top=1 - top / h, hspace=hspace)


def _histogram_figure(h: _Histogram, run: str) -> Any:
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(8, 5))
    _margins(fig)
    ax = fig.add_subplot()
    ax.stairs(h.counts, h.edges, color="C0", linewidth=1.2, fill=False)
    ax.stairs(h.counts, h.edges, color="C0", alpha=0.15, fill=True)
    ax.set_xlim(h.edges[0], h.edges[-1])
    top = int(h.counts.max(initial=0))
    ax.set_ylim(0, max(top * 1.05, 1))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(_label(h.field, h.units))
    ax.set_ylabel("counts")
    ax.grid(True, alpha=0.3)
    fig.suptitle(f"{h.name} \u2014 run {run}", fontsize=13, y=1 - 0.08 / fig.get_size_inches()[1])
    widths = np.diff(h.edges)
    uniform = len(widths) == 0 or np.allclose(widths, widths[0], rtol=1e-9, atol=0)
    facts = [f"{int(h.counts.sum()):,} entries in range",
             f"{len(h.counts)} bins" if uniform else f"{len(h.counts)} bins of varying width"]
    if h.underflow is not None:
        facts.append(f"underflow {h.underflow:,}")
    if h.overflow is not None:
        facts.append(f"overflow {h.overflow:,}")
    if h.nodes:
        facts.append(f"{h.nodes} node{'s' if h.nodes != 1 else ''}")
    facts.append(f"from {h.source}")
    ax.set_title("  \u00b7  ".join(facts), fontsize=9, color="0.3")
    return fig


def _waveform_figure(w: _Waveforms, run: str) -> Any:
    from matplotlib.figure import Figure

    n = len(w.channels)
    fig = Figure(figsize=(9, 1.3 + 2.6 * n))
    _margins(fig, top=0.45, hspace=0.1)
    axes = fig.subplots(n, 1, sharex=True, squeeze=False)[:, 0]
    for ax, (ch, (values, units)) in zip(axes, w.channels.items()):
        for i, (row, label) in enumerate(zip(values, w.labels)):
            ax.plot(w.time, row, linewidth=0.9, color=f"C{i % 10}", label=label)
        if w.time[0] < 0 < w.time[-1]:
            ax.axvline(0.0, color="0.5", linestyle="--", linewidth=0.8)
        ax.set_ylabel(_label(ch, units))
        ax.grid(True, alpha=0.3)
        ax.margins(x=0)
    axes[0].legend(loc="upper right", fontsize=8, ncols=min(len(w.labels), 4), framealpha=0.8)
    axes[-1].set_xlabel(_label("time since trigger", w.time_units))
    fig.suptitle(f"{w.stream}: first {len(w.labels)} saved frame{'s' if len(w.labels) != 1 else ''}"
                 f" \u2014 run {run}", fontsize=13, y=1 - 0.08 / fig.get_size_inches()[1])
    return fig
