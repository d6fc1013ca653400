"""`daq-coordinator recover RUN_DIR`: the run record of a run whose coordinator died.

Nodes that lose their coordinator end the run by themselves and leave
`<node>.report.json` in the run directory (coordinator/noderuntime.py).  From those,
from the processing nodes' HDF5 files (read up to their last flush where a node left
no report) and from the last live counts in stats.csv, this rebuilds what the
coordinator would have written: the books, missing.csv, run.h5 and run.json.  Run on
a finished run it rebuilds the same record from run.json's reports.
"""
from __future__ import annotations

import csv
import json
import logging
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from coordinator.record import keep_record, salvage
from coordinator.rundir import MASTER_FILE, RunDirectory, versions
from coordinator.topology import topology_from_dict

log = logging.getLogger("coordinator")

REPORT_SUFFIX = ".report.json"
EXIT_DEGRADED = 3      # as `daq-coordinator run`: the run did not end as asked, its record holds


class RecoverError(RuntimeError):
    """The folder is not a run directory this version can read."""


def read_report(path: Path) -> dict | None:
    """A node's report file, or None (an unreadable one is named in the log)."""
    if not path.exists():
        return None
    try:
        rep = json.loads(path.read_text())
        return rep if isinstance(rep, dict) and "node" in rep else None
    except (OSError, ValueError) as exc:
        log.error("%s: unreadable report file: %s", path, exc)
        return None


def incarnations(run_dir: Path, node: str) -> list[Path]:
    """The folders a node's incarnations wrote into, oldest first: the run directory, then
    `<node>-<k>/` for each that rejoined (coordinator/session.py)."""
    found = []
    for d in run_dir.glob(f"{node}-*"):
        m = re.fullmatch(re.escape(node) + r"-(\d+)", d.name)
        if m and d.is_dir():
            found.append((int(m.group(1)), d))
    return [run_dir] + [d for _, d in sorted(found)]


def last_counts(run_dir: Path) -> dict[str, int]:
    """Frames each node had at its last line in stats.csv (what the coordinator last saw)."""
    out: dict[str, int] = {}
    try:
        with open(run_dir / "stats.csv", newline="") as f:
            for row in csv.DictReader(f):
                try:
                    out[row["node"]] = max(out.get(row["node"], 0), int(row["frames"]))
                except (KeyError, TypeError, ValueError):
                    continue
    except OSError:
        pass
    return out


def recover(run_dir: Path) -> dict:
    """Rebuild and write the record of the run in `run_dir`; returns the new run.json."""
    run_dir = Path(run_dir).resolve()
    try:
        resolved = yaml.safe_load((run_dir / "topology.yaml").read_text())
    except OSError as exc:
        raise RecoverError(f"{run_dir}: not a run directory (no topology.yaml: {exc.strerror})") from None
    topo = topology_from_dict(resolved, source=str(run_dir / "topology.yaml"))
    m = re.search(r"-(\d{5,})$", run_dir.name)
    previous: dict[str, Any] = {}
    if (run_dir / "run.json").exists():
        previous = json.loads((run_dir / "run.json").read_text())
    number = int(m.group(1)) if m else int(previous.get("run", 0))
    seen = last_counts(run_dir)
    old_nodes = previous.get("nodes", {})
    where: dict[str, str] = {}
    reports: dict[str, dict] = {}

    def report_of(node: str, folder: Path) -> dict | None:
        rep = read_report(folder / f"{node}{REPORT_SUFFIX}")
        if rep is not None:
            reports[node] = rep
        if rep is not None and rep.get("report"):
            where[node] = "report file"
            return rep["report"]
        if (old_nodes.get(node) or {}).get("report"):
            where[node] = "run.json"
            return old_nodes[node]["report"]
        return None

    acq_reports = {a: report_of(a, run_dir) for a in topo.acquisition}
    proc_reports: dict[str, dict | None] = {}
    files: dict[str, list[str]] = {}
    for p in topo.processing:
        *past, current = incarnations(run_dir, p)
        for k, folder in enumerate(past, 1):           # lost incarnations: what their files hold
            name, found = f"{p}~{k}", [str(f) for f in [folder / f"{p}.h5"] if f.exists()]
            proc_reports[name], files[name] = salvage(name, found, writer_dead=True), found
            where[name] = "its file, up to the last flush" if proc_reports[name] else "nothing"
        rep = report_of(p, current)
        known = (rep or {}).get("files") or [str(f) for f in [current / f"{p}.h5"] if f.exists()]
        if rep is None:
            rep = salvage(p, known, writer_dead=True)
            where[p] = "its file, up to the last flush" if rep else "nothing"
        proc_reports[p], files[p] = rep, known
    for a in topo.acquisition:
        where.setdefault(a, "nothing: counted from stats.csv")
    lost = {n for n, w in where.items() if w.startswith("nothing")}
    rundir = RunDirectory(run_dir, number)
    books, master = keep_record(rundir, topo.name, acq_reports, proc_reports, files, lost,
                                {a: seen.get(a, 0) for a in topo.acquisition},
                                {"run": number, "result": "recovered"})
    message = "record rebuilt by daq-coordinator recover" + (
        f"; no report from {', '.join(sorted(lost))}" if lost else "")
    summary = {
        **previous,
        "name": topo.name, "run": number, "run_dir": str(run_dir),
        "result": previous.get("result", "recovered"), "exit_code": previous.get("exit_code", EXIT_DEGRADED),
        "message": previous.get("message") or message,
        "stop_reason": previous.get("stop_reason") or "coordinator lost",
        "duration_s": previous.get("duration_s", 0.0),
        "books": books.summary(), "missing_file": "missing.csv",
        "master_file": MASTER_FILE if master else None,
        "recovered": {"at": datetime.now(timezone.utc).isoformat(), "reports_from": where,
                      "nodes": {n: {k: v for k, v in r.items() if k != "report"} for n, r in reports.items()},
                      "versions": versions()},
    }
    if not previous:
        summary["nodes"] = {n: {"report": (acq_reports | proc_reports).get(n), "lost": n in lost}
                            for n in [*topo.acquisition, *topo.processing]}
    rundir.write_json(summary)
    return summary
