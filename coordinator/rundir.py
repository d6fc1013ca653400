"""The run directory (contract): `<directory>/<name>-<NNNNN>/` and everything written into it."""
from __future__ import annotations

import csv
import json
import os
import platform
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from coordinator import PROTOCOL_VERSION, __version__
from coordinator.books import Books

MASTER_FILE = "run.h5"
STATS_FIELDS = ["time", "node", "role", "state", "frames", "frames_per_s", "MB_per_s",
                "ring_fill", "ring_slots", "credits", "overflow", "rejected", "cpu_percent"]


def versions() -> dict[str, str]:
    import h5py
    import msgpack
    import zmq
    return {"daq": __version__, "protocol": str(PROTOCOL_VERSION), "python": sys.version.split()[0],
            "numpy": np.__version__, "pyzmq": zmq.__version__, "libzmq": zmq.zmq_version(),
            "h5py": h5py.__version__, "hdf5": h5py.version.hdf5_version,
            "msgpack": ".".join(map(str, msgpack.version)), "platform": platform.platform()}


@dataclass
class RunDirectory:
    path: Path
    number: int

    @classmethod
    def create(cls, directory: Path, name: str) -> "RunDirectory":
        """Make the next `<name>-<NNNNN>` folder; exclusive mkdir, so two coordinators never share one."""
        directory.mkdir(parents=True, exist_ok=True)
        pattern = re.compile(re.escape(name) + r"-(\d{5,})$")
        taken = [int(m.group(1)) for p in directory.iterdir() if (m := pattern.match(p.name))]
        number = max(taken, default=0) + 1
        while True:
            path = directory / f"{name}-{number:05d}"
            try:
                path.mkdir()
                return cls(path, number)
            except FileExistsError:
                number += 1

    @property
    def log_path(self) -> Path:
        return self.path / "log.txt"

    def write_topology(self, resolved: dict) -> None:
        with open(self.path / "topology.yaml", "w") as f:
            f.write("# Resolved topology of this run (every default filled in).\n")
            yaml.safe_dump(resolved, f, sort_keys=False)

    def write_json(self, record: dict) -> None:
        tmp = self.path / "run.json.tmp"
        tmp.write_text(json.dumps(record, indent=2, default=str))
        os.replace(tmp, self.path / "run.json")

    def open_stats(self) -> tuple[Any, Any]:
        f = open(self.path / "stats.csv", "w", newline="")
        w = csv.DictWriter(f, fieldnames=STATS_FIELDS, extrasaction="ignore")
        w.writeheader()
        return f, w

    def write_missing(self, books: Books) -> None:
        with open(self.path / "missing.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["seq_first", "seq_last", "count", "module", "cause", "node", "time"])
            for r in books.missing:
                w.writerow([r.first, r.last, r.count, r.module, r.cause, r.node, f"{r.time:.3f}"])


def last_lines(path: Path, n: int = 8, match: str = "", tail_bytes: int = 1 << 16) -> list[str]:
    """The last n non-empty lines of a log (optionally only those containing `match`), from its
    last `tail_bytes` only: a long run's log is never read whole."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - tail_bytes))
            data = f.read(tail_bytes)
    except (OSError, TypeError):
        return []
    lines = data.decode(errors="replace").splitlines()
    if size > tail_bytes:
        lines = lines[1:]          # the first one is cut
    lines = [ln for ln in lines if ln.strip() and match in ln]
    return lines[-n:] if n > 0 else []
