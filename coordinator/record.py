"""The run's record from what the nodes said or left: books, missing.csv, the master file.

Shared by the coordinator at the end of a run and by `daq-coordinator recover`, which
rebuilds the record from the report files and HDF5 files that nodes leave when their
coordinator died: one way of balancing, whoever does it.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from coordinator.books import Books, balance
from coordinator.nodefiles import clear_write_flags, saved_in_file
from coordinator.master import write_master
from coordinator.rundir import MASTER_FILE, RunDirectory

log = logging.getLogger("coordinator")


def salvage(node: str, files: list[str], writer_dead: bool) -> dict | None:
    """A processing node that sent no report: what its files hold (up to their last flush)."""
    saved: dict[str, list] = {}
    for path in files:
        try:
            if writer_dead and clear_write_flags(Path(path)) == "cleared":
                log.warning("%s: cleared the write flags its crash left in %s", node, path)
            for module, ranges in saved_in_file(Path(path)).items():
                saved.setdefault(module, []).extend(ranges)
        except Exception as exc:  # unreadable or never created: nothing salvaged
            log.warning("%s: could not read %s: %s", node, path, exc)
    if not saved:
        return None
    log.warning("%s sent no report; %d frames found in its file are kept as saved",
                node, sum(b - a for r in saved.values() for a, b in r))
    return {"saved": saved, "files": list(files), "salvaged": True}


def keep_record(rundir: RunDirectory, name: str, acq_reports: dict[str, dict | None],
                proc_reports: dict[str, dict | None], node_files: dict[str, list[str]],
                lost: set[str], seen: dict[str, int], attrs: dict[str, Any],
                places: dict[str, dict] | None = None) -> tuple[Books, Path | None]:
    """Balance the books and write missing.csv and the master file; returns (books, master)."""
    produced = {a: (r or {}).get("produced") for a, r in acq_reports.items()}
    books = balance(produced, acq_reports, proc_reports, lost, seen)
    rundir.write_missing(books)
    master = None
    if any(node_files.values()):   # a run that failed before its nodes made files has nothing to link
        try:
            master = write_master(rundir.path / MASTER_FILE, name, books, node_files, attrs, places)
        except Exception as exc:
            log.error("could not write the master file: %s", exc)
    return books, master
