"""The live-view example of docs/operations.md, run as the page shows it: a run of
topologies/gamma-spectrum.yaml in the background and `daq-coordinator view topologies/runs`."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from conftest import coordinator_cmd

ROOT = Path(__file__).resolve().parent.parent


def test_live_view_example(tmp_path: Path, clean_system) -> None:
    (tmp_path / "topologies").mkdir()
    shutil.copy(ROOT / "topologies" / "gamma-spectrum.yaml", tmp_path / "topologies")
    run = subprocess.Popen(coordinator_cmd("run", "topologies/gamma-spectrum.yaml", "--duration", "60", "--json"),
                           cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    view = None
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not list((tmp_path / "topologies" / "runs").glob("*/live.json")):
            assert run.poll() is None, "the run ended before it was live"
            time.sleep(0.1)
        view = subprocess.Popen(coordinator_cmd("view", "topologies/runs", "--port", "0"), cwd=tmp_path,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        url = view.stderr.readline().split(": ", 1)[1].split()[0]
        snap: dict = {}
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (snap.get("streams") and snap.get("histograms")):
            with urllib.request.urlopen(url + "data.json", timeout=5) as res:
                snap = json.loads(res.read())
            time.sleep(0.2)
    finally:
        if view is not None:
            view.send_signal(signal.SIGTERM)
            view.wait(timeout=10)
        run.send_signal(signal.SIGINT)
        out, _ = run.communicate(timeout=60)
    trace = snap["streams"][0]["traces"][0]
    assert trace["label"] == "rp1 IN1" and max(trace["v"]) > 0.03      # a pulse above the trigger level
    assert snap["histograms"][0]["name"] == "spectrum"
    summary = json.loads(out)
    assert summary["result"] == "interrupted" and summary["books"]["balanced"]
    assert (Path(summary["run_dir"]) / "plots").is_dir() and not (Path(summary["run_dir"]) / "live.json").exists()
