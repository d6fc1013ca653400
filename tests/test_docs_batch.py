"""The complete examples of docs/batch.md run as the page shows them (API script, batch file)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import run_cli, write_topology
from test_system import board_topology

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_api_example(tmp_path: Path, clean_system) -> None:
    topo = write_topology(tmp_path, board_topology())
    res = subprocess.run([sys.executable, str(DOCS / "examples" / "threshold_scan.py"), str(topo),
                          "--levels", "0.05", "0.3", "--frames", "60"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [line.split() for line in res.stdout.splitlines()[1:]]
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [("0.050", "1", "completed", "120"),
                                                        ("0.300", "2", "completed", "120")]
    assert float(rows[0][4]) > float(rows[1][4]) > 0        # the rate falls as the level rises


def test_batch_file_example(tmp_path: Path, clean_system) -> None:
    res = run_cli("batch", str(DOCS / "examples" / "threshold_scan.yaml"), "--run-dir", str(tmp_path / "runs"),
                  "--json", cwd=tmp_path, timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = json.loads(res.stdout)
    assert [(r["name"], r["repeat"], r["result"]) for r in rows] == \
        [("low", 1, "completed"), ("high", 1, "completed"), ("high", 2, "completed")]
    assert rows[1]["saved"] == 400 and rows[1]["stop_reason"] == "frames"
    assert (tmp_path / "runs" / "batch-threshold_scan.json").exists()
