"""The run's master file `run.h5`: one NeXus file over every processing node's file.

    /entry                     NXentry: run, result, frames_produced/saved/missing
    /entry/nodes/<node>        external link to that node's /entry (`<node>~<k>`: an earlier, lost
                               incarnation); attribute `<node>_where` on /entry/nodes: JSON of
                               the file's host and whether it is in place, fetched or left there
    /entry/<stream>            NXdata: every saved part of every node, as HDF5 virtual datasets:
                               module by module (attr module_rows: where each starts), each
                               module's parts in seq order; `time` copied
    /entry/reduced/<table>     every node's rows of a table with a `seq` column, ordered by seq
    /entry/<histogram>         counts summed over the nodes (a copy: a sum cannot be virtual)
    /entry/missing             the missing-frame table (as missing.csv)

Virtual datasets map runs of consecutive rows, so their size grows with the number of
write batches, not of frames (a batch is a block of events, or what arrived in one
poll at low rates); past MAX_MAPPINGS the order is given as an index instead.  That is why parts go module by module: a node writes an
event batch module by module, so (seq, module) order would need one mapping per row.  Source files are named relative to the master: the
run directory can be moved or copied whole.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from coordinator.books import Books

log = logging.getLogger("coordinator")

#: Above this many runs of rows per dataset, rows stay in node-file order with an `order` index
#: (HDF5 reads a virtual dataset mapping by mapping; creating each costs a few microseconds).
MAX_MAPPINGS = 100_000


def write_master(path: Path, name: str, books: Books, node_files: dict[str, list[str]],
                 attrs: dict[str, Any], places: dict[str, dict] | None = None) -> Path:
    """Write `path`; `places` says per node file where it is (host, gathered or not)."""
    places = places or {}
    here = path.parent
    readable: list[tuple[str, h5py.File]] = []
    try:
        with h5py.File(path, "w") as f:
            entry = f.create_group("entry")
            entry.attrs.update({"NX_class": "NXentry", "title": name, **attrs})
            nodes = entry.create_group("nodes")
            nodes.attrs["NX_class"] = "NXcollection"
            for node, files in node_files.items():
                for fp in files:
                    rel = os.path.relpath(fp, here)
                    nodes[node] = h5py.ExternalLink(rel, "/entry")
                    place = places.get(fp, {})
                    if place:
                        nodes.attrs[f"{node}_where"] = json.dumps(place)
                    try:
                        readable.append((rel, h5py.File(here / rel, "r", libver="latest", swmr=True)))
                    except OSError as exc:
                        log.warning("master file: %s not readable here (%s); only linked", fp, exc)
            _ordered_groups(entry, readable)
            _summed_histograms(entry, readable)
            _missing_table(entry, books)
    finally:
        for _, src in readable:
            src.close()
    return path


def _groups_with_seq(src: h5py.File) -> dict[str, h5py.Group]:
    """Group path -> group, for the raw streams and the reduced tables that have a seq column."""
    out = {}
    e = src["entry"]
    for name, g in e.items():
        if isinstance(g, h5py.Group) and g.attrs.get("NX_class") == "NXdata" and "seq" in g and "module" in g:
            out[f"entry/{name}"] = g
    for name, g in e.get("reduced", {}).items():
        if isinstance(g, h5py.Group) and "seq" in g and g["seq"].ndim == 1:
            out[f"entry/reduced/{name}"] = g
    return out


def _ordered_groups(entry: h5py.Group, sources: list[tuple[str, h5py.File]]) -> None:
    found: dict[str, list[tuple[str, h5py.Group]]] = {}
    for rel, src in sources:
        for gpath, g in _groups_with_seq(src).items():
            found.setdefault(gpath, []).append((rel, g))
    for gpath, parts in found.items():
        try:
            _ordered_group(entry.file, gpath, parts)
        except (ValueError, KeyError, OSError) as exc:    # files that disagree: link only
            log.warning("master file: %s not merged: %s", gpath, exc)


def _ordered_group(master: h5py.File, gpath: str, parts: list[tuple[str, h5py.Group]]) -> None:
    """Virtual datasets of every column of `gpath`, rows ordered by (seq, module)."""
    first = parts[0][1]
    by_module = "module" in first and first.attrs.get("NX_class") == "NXdata"   # raw parts; tables by seq
    # raw parts: `time` is the waveform's axis (copied below); in a table it is a column
    columns = [c for c, ds in first.items() if isinstance(ds, h5py.Dataset) and ds.ndim >= 1
               and ds.shape[0] == first["seq"].shape[0] and not (by_module and c == "time")]
    for c in columns:
        for _, g in parts[1:]:
            if c not in g or g[c].dtype != first[c].dtype or g[c].shape[1:] != first[c].shape[1:]:
                raise ValueError(f"column {c} differs between node files")
    if by_module:
        names = [list(g["module"].attrs.get("names", [])) for _, g in parts]
        if any(n != names[0] for n in names):
            raise ValueError("module names differ between node files")
    lengths = [min(g[c].shape[0] for c in columns) for _, g in parts]   # a crashed writer: shortest
    seq = np.concatenate([g["seq"][:n] for (_, g), n in zip(parts, lengths)])
    module = (np.concatenate([g["module"][:n] for (_, g), n in zip(parts, lengths)])
              if by_module else np.zeros(len(seq), np.uint8))
    src = np.repeat(np.arange(len(parts)), lengths)
    row = np.concatenate([np.arange(n) for n in lengths]) if lengths else np.zeros(0, np.int64)
    order = np.lexsort((seq, module))
    # runs of consecutive rows of one file: one mapping each
    cut = np.flatnonzero((np.diff(src[order]) != 0) | (np.diff(row[order]) != 1)) + 1
    ordered = len(cut) < MAX_MAPPINGS
    if ordered:
        src, row = src[order], row[order]
    else:     # too fragmented to map: the files one after another, and the order as an index
        cut = np.flatnonzero(np.diff(src) != 0) + 1
    starts = np.concatenate([[0], cut]) if len(src) else np.zeros(0, np.int64)
    ends = np.concatenate([cut, [len(src)]]) if len(src) else np.zeros(0, np.int64)
    group = master.require_group(gpath) if gpath in master else master.create_group(gpath)
    if gpath.startswith("entry/reduced/"):
        master["entry/reduced"].attrs["NX_class"] = "NXcollection"
    group.attrs.update({k: v for k, v in first.attrs.items()})
    key = "module, seq" if by_module else "seq"
    group.attrs["ordered_by"] = key if ordered else f"node file; the dataset `order` lists the rows by {key}"
    group.attrs["mappings"] = len(starts)
    if not ordered:
        group.create_dataset("order", data=order.astype(np.uint64))
    if by_module:
        n_names = len(first["module"].attrs.get("names", [])) or int(module.max(initial=0)) + 1
        group.attrs["module_rows"] = np.searchsorted(module[order], np.arange(n_names))
    for c in columns:
        ds0 = first[c]
        layout = h5py.VirtualLayout(shape=(len(seq), *ds0.shape[1:]), dtype=ds0.dtype)
        vsrc = [h5py.VirtualSource(rel, g[c].name, shape=(n, *ds0.shape[1:]))
                for (rel, g), n in zip(parts, lengths)]
        for a, b in zip(starts, ends):
            r = row[a]
            layout[a:b] = vsrc[src[a]][r:r + (b - a)]
        out = group.create_virtual_dataset(c, layout, fillvalue=0)
        out.attrs.update({k: v for k, v in ds0.attrs.items()})
    if by_module and "time" in first:
        group.create_dataset("time", data=first["time"][()])
        group["time"].attrs.update({k: v for k, v in first["time"].attrs.items()})


def _summed_histograms(entry: h5py.Group, sources: list[tuple[str, h5py.File]]) -> None:
    """Histograms (NXdata with `counts`, unlike raw parts no `module`) summed over the nodes,
    their entries, underflow and overflow too."""
    found: dict[str, list[h5py.Group]] = {}
    for _, src in sources:
        for name, g in src["entry"].items():
            if isinstance(g, h5py.Group) and g.attrs.get("NX_class") == "NXdata" and "counts" in g \
                    and "module" not in g:
                found.setdefault(name, []).append(g)
    for name, groups in found.items():
        if name in entry:
            log.warning("master file: histogram %s not summed: /entry/%s is taken", name, name)
            continue
        first = groups[0]
        same = [g for g in groups if g["counts"].shape == first["counts"].shape]
        if len(same) < len(groups):
            log.warning("master file: histogram %s differs in shape between node files; summed where equal", name)
        out = entry.create_group(name)
        out.attrs.update({k: v for k, v in first.attrs.items()})
        out.attrs["summed_over_nodes"] = len(same)
        for dname, ds in first.items():
            data = sum(g["counts"][()] for g in same) if dname == "counts" else ds[()]
            out.create_dataset(dname, data=data)
            out[dname].attrs.update({k: v for k, v in ds.attrs.items()})
        for key in ("entries", "underflow", "overflow"):
            if key in first["counts"].attrs:
                out["counts"].attrs[key] = sum(int(g["counts"].attrs.get(key, 0)) for g in same)


def _missing_table(entry: h5py.Group, books: Books) -> None:
    str_t = h5py.string_dtype()
    dt = np.dtype([("seq_first", "<u8"), ("seq_last", "<u8"), ("count", "<u8"),
                   ("module", str_t), ("cause", str_t), ("node", str_t), ("time", "<f8")])
    table = np.array([(r.first, r.last, r.count, r.module, r.cause, r.node, r.time)
                      for r in books.missing], dtype=dt)
    ds = entry.create_dataset("missing", data=table, maxshape=(None,))
    ds.attrs["description"] = "frames not in the output: seq range (inclusive), module, cause, node, time (unix s)"
    summ = books.summary()
    for k in ("produced", "saved", "missing"):
        entry.attrs[f"frames_{k}"] = summ[k]
    entry.attrs["missing_by_cause"] = json.dumps(summ["missing_by_cause"])
