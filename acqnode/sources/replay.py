"""Replay a finished run's saved raw frames as a triggered source ("process later").

A run may save raw frames only and be processed later: a replay topology's acquisition
node reads, instead of a board, the frames one module contributed to a stream of an earlier
run, and the usual pipeline runs over them.  What the replay produces equals what that run
produced on-line, as far as the run kept it:

* frames: the saved parts of `module` (`/entry/<stream>` of every processing node's file:
  one row per saved part, columns seq, timestamp, flags, module (index into the attribute
  `names`) and one (rows, samples) dataset per channel), in seq order, header and samples
  as acquired (`reserved` is 0, as every source writes it);
* gaps: every seq of the module the run did not save is reported as lost, with the cause
  the run's missing-frame record gives it (missing.csv, else run.h5 /entry/missing), so the
  replay's books show the same losses for the same reasons; a seq neither saved nor in the
  record is lost as `not_recorded`.

`RunFrames` is the reading side (an index of the saved seqs, chunked reads); `ReplaySource`
is the reader's triggered-source interface over it (`read(first, out, timeout) -> Readout`).
Files are read in chunks of rows (h5py slices, sorted rows); only the seq index (18 bytes
per saved frame) is held whole.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import yaml

from acqnode.sources.boardsource import Readout
from coordinator.frames import HEADER_NAMES, channel_names

log = logging.getLogger("acqnode.replay")

#: The cause of a seq the run neither saved nor listed in its missing-frame record.
NOT_RECORDED = "not_recorded"
#: What to put in a topology so that a run can be replayed.
RAW_HINT = ("save raw waveforms: `{stage: save, data: raw}` (or `data: both`) in the pipeline of "
            "the processing nodes, and record the run again")
#: Bytes of frames read per chunk when no chunk size is given.
CHUNK_BYTES = 8 << 20
MAX_CHUNK_FRAMES = 65536
#: Rows of seq/module read at a time while indexing a file.
INDEX_ROWS = 1 << 20
#: Sorted rows closer than this are read as one slice (the rows between are read and dropped).
ROW_GAP = 256
#: More separate runs of rows than this in one read: h5py point selection instead of slices.
MAX_SLICES = 32


class ReplayError(ValueError):
    """A run that cannot be replayed as asked (what is missing and what to do)."""


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _open_h5(path: Path) -> h5py.File:
    try:       # node files are written in SWMR mode: a crashed writer's file is read to its last flush
        return h5py.File(path, "r", libver="latest", swmr=True)
    except OSError:
        return h5py.File(path, "r")


def _load_record(run_dir: Path) -> dict:
    path = run_dir / "run.json"
    if not run_dir.is_dir():
        raise ReplayError(f"{run_dir}: no such run directory (give the folder of a finished run, "
                          f"e.g. runs/<name>-00001)")
    if not path.is_file():
        raise ReplayError(f"{run_dir}: no run.json, so not the folder of a finished run (give the folder "
                          f"a run wrote, e.g. runs/<name>-00001; a run whose coordinator died gets one from "
                          f"`daq-coordinator recover {run_dir}`)")
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ReplayError(f"{path}: unreadable ({exc}); `daq-coordinator recover {run_dir}` rebuilds it") from None
    if not isinstance(record, dict):
        raise ReplayError(f"{path}: not a run record (a JSON object expected)")
    return record


def _run_topology(run_dir: Path, record: dict) -> dict | None:
    """The run's topology as plain data: run.json's requested topology, else topology.yaml."""
    topo = ((record.get("parameters") or {}).get("requested") or {}).get("topology")
    if isinstance(topo, dict) and isinstance(topo.get("streams"), dict):
        return topo
    try:
        topo = yaml.safe_load((run_dir / "topology.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    return topo if isinstance(topo, dict) and isinstance(topo.get("streams"), dict) else None


def node_files(run_dir: Path, record: dict) -> list[Path]:
    """The processing nodes' HDF5 files of a run (run.json `files`: path -> where it is), found
    where they are now: in place, else at the same place under a moved run directory.  A run
    record without `files` (rebuilt by recover from nothing): every node file in the folder."""
    places = record.get("files")
    if not isinstance(places, dict) or not places:
        found = sorted(p for p in [*run_dir.glob("*.h5"), *run_dir.glob("*/*.h5")] if p.name != "run.h5")
        return found
    old_dir = record.get("run_dir")
    out: list[Path] = []
    absent: list[str] = []
    for name, place in places.items():
        p = Path(name)
        candidates = [p] if p.is_absolute() else [run_dir / p]
        if old_dir:
            rel = os.path.relpath(p, old_dir) if p.is_absolute() else str(p)
            if not rel.startswith(".."):
                candidates.append(run_dir / rel)
        candidates.append(run_dir / p.name)
        hit = next((c for c in candidates if c.is_file()), None)
        if hit is None:
            where = (place or {}).get("where", "") if isinstance(place, dict) else ""
            absent.append(f"{name}" + (f" ({where})" if where else ""))
        elif hit not in out:
            out.append(hit)
    if absent:
        raise ReplayError(f"{run_dir}: the run's node files {', '.join(absent)} are not here; copy them into "
                          f"the run directory (where run.json lists them, or next to run.json) to replay the run")
    return out


class _RawFile:
    """One node file's raw group of a stream: its datasets and how many rows are complete."""

    def __init__(self, path: Path, h5: h5py.File, group: h5py.Group, columns: list[str]) -> None:
        self.path = path
        self.h5 = h5
        self.group = group
        self.ds = {c: group[c] for c in columns}
        # a crashed writer may have grown one dataset before another: the shortest counts
        self.rows = min(ds.shape[0] for ds in self.ds.values())
        self.names = [_text(n) for n in group["module"].attrs.get("names", [])]


def _read_rows(ds: h5py.Dataset, rows: np.ndarray) -> np.ndarray:
    """ds[rows] for sorted, distinct rows: slices over runs of near rows (fast in HDF5), or a
    point selection when the rows are scattered."""
    if len(rows) == 0:
        return np.empty((0, *ds.shape[1:]), ds.dtype)
    lo, hi = int(rows[0]), int(rows[-1]) + 1
    if hi - lo <= 2 * len(rows) + ROW_GAP:
        return ds[lo:hi][rows - lo]
    cut = np.flatnonzero(np.diff(rows) > ROW_GAP) + 1
    if len(cut) >= MAX_SLICES:
        return ds[rows]
    starts = np.concatenate([[0], cut])
    ends = np.concatenate([cut, [len(rows)]])
    out = np.empty((len(rows), *ds.shape[1:]), ds.dtype)
    for a, b in zip(starts, ends):          # at most MAX_SLICES reads
        r0, r1 = int(rows[a]), int(rows[b - 1]) + 1
        out[a:b] = ds[r0:r1][rows[a:b] - r0]
    return out


class RunFrames:
    """The saved raw frames of one module of one stream of a finished run, by seq.

    `seqs` are the saved seqs (sorted, each once: a seq two files hold, after a node's
    rejoin, is taken from the first), `read_into(i, out)` fills `out` with the frames at
    index positions i, i+1, ... (seq order), `missing()` the seq ranges the run did not save
    with their cause, `total_seqs` one past the last seq the module produced.
    """

    def __init__(self, run_dir: Path, stream: str, module: str, dtype: np.dtype,
                 chunk: int | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.stream = stream
        self.module = module
        self.dtype = np.dtype(dtype)
        self.chunk = int(chunk) if chunk else max(1, min(MAX_CHUNK_FRAMES, CHUNK_BYTES // self.dtype.itemsize))
        if self.chunk < 1:
            raise ValueError(f"chunk must be >= 1 frame, got {chunk}")
        missing_fields = [n for n in HEADER_NAMES if n not in (self.dtype.names or ())]
        if missing_fields:
            raise ValueError(f"dtype is not a frame record dtype (no {', '.join(missing_fields)})")
        self.channels = channel_names(self.dtype)
        self.record = _load_record(self.run_dir)
        self._check_stream_and_module(_run_topology(self.run_dir, self.record))
        self.files: list[_RawFile] = []
        try:
            self._open_files(node_files(self.run_dir, self.record))
            self._build_index()
            self._gaps = self._read_missing()
        except BaseException:
            self.close()
            raise
        self.total_seqs = self._total_seqs()

    # ---- what the run says -------------------------------------------------------------------
    def _check_stream_and_module(self, topo: dict | None) -> None:
        self.topology_streams: dict[str, Any] = (topo or {}).get("streams") or {}
        if topo is None:
            return                              # no topology kept: the files decide below
        if self.stream not in self.topology_streams:
            raise ReplayError(f"{self.run_dir}: the run has no stream {self.stream!r} (its streams: "
                              f"{', '.join(sorted(self.topology_streams)) or 'none'}); replay one of those, "
                              f"or give the run that recorded {self.stream!r}")
        modules = list((self.topology_streams[self.stream] or {}).get("modules") or [])
        if modules and self.module not in modules:
            raise ReplayError(f"{self.run_dir}: stream {self.stream!r} of the run has no module {self.module!r} "
                              f"(its modules: {', '.join(modules)}); replay the frames of one of those "
                              f"acquisition nodes")

    def _open_files(self, paths: list[Path]) -> None:
        columns = ["seq", "timestamp", "flags", "module", *self.channels]
        raw_seen: list[str] = []
        for path in paths:
            try:
                h5 = _open_h5(path)
            except OSError as exc:
                raise ReplayError(f"{self.run_dir}: cannot read the node file {path} ({exc})") from None
            group = h5.get(f"entry/{self.stream}")
            if not (isinstance(group, h5py.Group) and group.attrs.get("NX_class") == "NXdata"
                    and "seq" in group and "module" in group):
                h5.close()
                continue
            raw_seen.append(path.name)
            bad = self._layout_problems(group)
            if bad:
                h5.close()
                raise ReplayError(f"{self.run_dir}: the raw frames of stream {self.stream!r} in {path.name} do "
                                  f"not fit the stream's frame layout: {'; '.join(bad)} (the replay's stream must "
                                  f"have the channels, sample types and samples the run saved; a crop or "
                                  f"decimate stage before the save changes them)")
            f = _RawFile(path, h5, group, columns)
            self.files.append(f)
        if not raw_seen:
            where = ", ".join(p.name for p in paths) or "none found"
            raise ReplayError(f"{self.run_dir}: the run saved no raw waveforms of stream {self.stream!r} "
                              f"(node files: {where}: only reduced data, pulse windows of `mode: sparse`, or "
                              f"nothing); a run to be processed "
                              f"later must {RAW_HINT}")
        names = {n for f in self.files for n in f.names}
        if not self.topology_streams and self.module not in names:
            raise ReplayError(f"{self.run_dir}: stream {self.stream!r} of the run has no module {self.module!r} "
                              f"(its modules: {', '.join(sorted(names))}); replay the frames of one of those "
                              f"acquisition nodes")

    def _layout_problems(self, group: h5py.Group) -> list[str]:
        bad = []
        for ch in self.channels:
            want = self.dtype.fields[ch][0]
            if ch not in group:
                bad.append(f"no channel {ch}")
                continue
            ds = group[ch]
            if ds.dtype != want.base or ds.shape[1:] != want.shape:
                bad.append(f"{ch} is {ds.dtype}{list(ds.shape[1:])}, the stream's {want.base}{list(want.shape)}")
        for col in ("timestamp", "flags"):
            if col not in group:
                bad.append(f"no column {col}")
        return bad

    def _build_index(self) -> None:
        """seq -> (file, row) of every saved part of the module, sorted by seq, each seq once."""
        seqs, fids, rows = [], [], []
        for fi, f in enumerate(self.files):
            if self.module not in f.names:
                continue
            mi = f.names.index(self.module)
            for a in range(0, f.rows, INDEX_ROWS):      # f.rows / INDEX_ROWS reads
                b = min(a + INDEX_ROWS, f.rows)
                here = np.flatnonzero(f.ds["module"][a:b] == mi)
                if len(here):
                    seqs.append(f.ds["seq"][a:b][here])
                    rows.append((here + a).astype(np.int64))
                    fids.append(np.full(len(here), fi, np.uint16))
        seq = np.concatenate(seqs).astype(np.uint64) if seqs else np.zeros(0, np.uint64)
        fid = np.concatenate(fids) if fids else np.zeros(0, np.uint16)
        row = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        order = np.lexsort((row, fid, seq))            # by seq; of a seq saved twice the first file's
        seq, fid, row = seq[order], fid[order], row[order]
        first = np.ones(len(seq), bool)
        first[1:] = seq[1:] != seq[:-1]
        self.duplicates = int(len(seq) - first.sum())
        self.seqs: np.ndarray = seq[first]
        self._fid: np.ndarray = fid[first]
        self._row: np.ndarray = row[first]

    def _read_missing(self) -> list[tuple[int, int, str]]:
        """This module's ranges [start, stop) of the missing-frame record, sorted, adjacent ranges
        of one cause merged.  missing.csv, else run.h5's /entry/missing; neither: no record."""
        found: list[tuple[int, int, str]] = []
        path = self.run_dir / "missing.csv"
        master = self.run_dir / (self.record.get("master_file") or "run.h5")
        self.record_file: str | None = None
        if path.is_file():
            self.record_file = path.name
            with open(path, newline="") as fh:
                for row in csv.DictReader(fh):
                    if row.get("module") == self.module:
                        found.append((int(row["seq_first"]), int(row["seq_last"]) + 1, row["cause"] or NOT_RECORDED))
        elif master.is_file():
            with h5py.File(master, "r") as h:
                table = h.get("entry/missing")
                if isinstance(table, h5py.Dataset):
                    self.record_file = f"{master.name}:/entry/missing"
                    t = table[()]
                    for first, last, mod, cause in zip(t["seq_first"], t["seq_last"], t["module"], t["cause"]):
                        if _text(mod) == self.module:
                            found.append((int(first), int(last) + 1, _text(cause) or NOT_RECORDED))
        if self.record_file is None:
            log.warning("%s: no missing-frame record (missing.csv, run.h5); gaps are replayed as %s",
                        self.run_dir, NOT_RECORDED)
        found.sort()
        merged: list[tuple[int, int, str]] = []
        for a, b, c in found:
            if merged and merged[-1][1] == a and merged[-1][2] == c:
                merged[-1] = (merged[-1][0], b, c)
            elif b > a:
                merged.append((a, b, c))
        return merged

    def _total_seqs(self) -> int:
        books = (self.record.get("books") or {}).get("modules") or {}
        produced = (books.get(self.module) or {}).get("produced")
        if produced is None:
            report = ((self.record.get("nodes") or {}).get(self.module) or {}).get("report") or {}
            produced = report.get("produced")
        if produced is not None:
            return int(produced)
        top = int(self.seqs[-1]) + 1 if len(self.seqs) else 0
        return max([top] + [b for _, b, _ in self._gaps])

    # ---- public ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.seqs)

    def missing(self) -> list[tuple[int, int, str]]:
        """Seq ranges [start, stop) of this module the run did not save, with their cause."""
        return list(self._gaps)

    def read_into(self, start: int, out: np.ndarray) -> int:
        """Frames at index positions start, start+1, ... (seq order) into `out` (records of
        `dtype`), at most `chunk` frames per read; returns how many (fewer at the end)."""
        if out.dtype != self.dtype:
            raise ValueError(f"out must hold records of {self.dtype}, not {out.dtype}")
        n = max(0, min(len(out), len(self.seqs) - start))
        for a in range(0, n, self.chunk):               # ceil(n / chunk) reads
            self._fill(out[a:min(a + self.chunk, n)], start + a)
        return n

    def read(self, start: int, n: int) -> np.ndarray:
        """A new array of the frames at index positions start .. start+n-1 (fewer at the end)."""
        out = np.empty(max(0, min(n, len(self.seqs) - start)), self.dtype)
        self.read_into(start, out)
        return out

    def chunks(self):
        """The saved frames in seq order, `chunk` at a time."""
        for a in range(0, len(self.seqs), self.chunk):
            yield self.read(a, self.chunk)

    def _fill(self, out: np.ndarray, start: int) -> None:
        n = len(out)
        fid = self._fid[start:start + n]
        row = self._row[start:start + n]
        out["reserved"] = 0
        for fi in np.unique(fid):                       # one pass per node file
            dest = np.flatnonzero(fid == fi)
            order = np.argsort(row[dest], kind="stable")
            dest, rows = dest[order], row[dest][order]
            f = self.files[int(fi)]
            for name in ("seq", "timestamp", "flags", *self.channels):
                out[name][dest] = _read_rows(f.ds[name], rows)

    def close(self) -> None:
        for f in self.files:
            try:
                f.h5.close()
            except Exception:      # already closed
                pass
        self.files = []

    def __enter__(self) -> "RunFrames":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class ReplaySource:
    """The frames one module saved in a finished run, as a triggered source: `read` fills the
    next frames in seq order and says which seqs after them the run lost, and why."""

    triggered = True

    def __init__(self, run_dir: Path, stream_cfg: Any, module: str, chunk: int | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.dtype = stream_cfg.dtype
        self.run = RunFrames(self.run_dir, stream_cfg.name, module, self.dtype, chunk)
        self.module = module
        self.hardware: dict = {}
        self.total_seqs = self.run.total_seqs
        gaps = self.run.missing()
        self._gap_start = np.array([a for a, _, _ in gaps], np.int64)
        self._gap_stop = np.array([b for _, b, _ in gaps], np.int64)
        self._gap_cause = [c for _, _, c in gaps]
        self._seqs = self.run.seqs.astype(np.int64)
        self._buf = np.empty(self.run.chunk, self.dtype)
        self._buf_start = 0          # index position of _buf[0]
        self._buf_n = 0
        self.replayed = 0
        self.gaps: dict[str, int] = {}

    def pace(self, seq: int = 0) -> float:
        return 0.0

    def new_run(self) -> None:
        """The reader serves another run with this source: the replay starts again from seq 0
        (`read` goes by `first`), its counters from zero."""
        self.replayed = 0
        self.gaps = {}

    def read(self, first: int, out: np.ndarray, timeout: float) -> Readout:
        """Frames with seqs first, first+1, ... into out[:k] (as many consecutive saved seqs as fit),
        then the seqs up to the next saved one (or the next change of cause) as lost."""
        end = self.total_seqs
        if first >= end:
            time.sleep(max(0.0, min(timeout, 0.05)))   # exhausted: like a board with no triggers
            return Readout(0)
        pos = int(np.searchsorted(self._seqs, first))
        n = min(len(out), end - first)
        window = self._seqs[pos:pos + n] - np.arange(min(n, len(self._seqs) - pos))
        k = int(np.searchsorted(window, first, side="right"))   # leading seqs first, first+1, ...
        if k:
            self._copy(pos, out[:k])
            self.replayed += k
        nxt = first + k
        if nxt >= end or (pos + k < len(self._seqs) and self._seqs[pos + k] == nxt):
            return Readout(k)
        saved_next = int(self._seqs[pos + k]) if pos + k < len(self._seqs) else end
        stop = min(saved_next, end)
        i = int(np.searchsorted(self._gap_start, nxt, side="right")) - 1
        if i >= 0 and self._gap_stop[i] > nxt:
            cause = self._gap_cause[i]
            stop = min(stop, int(self._gap_stop[i]))
        else:
            cause = NOT_RECORDED
            if i + 1 < len(self._gap_start):
                stop = min(stop, int(self._gap_start[i + 1]))
        self.gaps[cause] = self.gaps.get(cause, 0) + stop - nxt
        return Readout(k, stop - nxt, cause)

    def _copy(self, pos: int, out: np.ndarray) -> None:
        done, k = 0, len(out)
        while done < k:                        # at most k / chunk + 1 refills
            p = pos + done
            if not self._buf_start <= p < self._buf_start + self._buf_n:
                self._buf_start, self._buf_n = p, self.run.read_into(p, self._buf)
            off = p - self._buf_start
            m = min(k - done, self._buf_n - off)
            out[done:done + m] = self._buf[off:off + m]
            done += m

    def report(self) -> dict:
        return {"replayed_from": str(self.run_dir), "module": self.module, "frames": self.replayed,
                "gaps": dict(self.gaps), "total_seqs": self.total_seqs,
                "missing_record": self.run.record_file, "duplicates_skipped": self.run.duplicates}

    def close(self) -> None:
        self.run.close()
