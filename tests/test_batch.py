"""`daq-coordinator batch PLAN`: runs of one system from a file, checked first, resumable."""
from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from conftest import coordinator_cmd, run_cli, write_topology
from test_system import board_topology

LEVELS = (0.05, 0.15, 0.3)


def write_plan(folder: Path, plan: dict, name: str = "plan.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    return path


def scan_plan(**extra) -> dict:
    return {"topology": "topo.yaml", "defaults": {"duration": 2.0, "frames": 0}, **extra,
            "runs": [{"name": f"level{lv}", "set": {"acquisition.rp1.source.trigger.level": lv,
                                                     "acquisition.rp2.source.trigger.level": lv}}
                     for lv in LEVELS]}


def test_trigger_level_scan(tmp_path: Path, clean_system) -> None:
    """Three runs, rising trigger level on emulated boards: three run directories, each with
    its level recorded (asked, accepted by the board, in the saved file) and the trigger rate
    falling as the level rises."""
    write_topology(tmp_path, board_topology())
    plan = write_plan(tmp_path, scan_plan())
    res = run_cli("batch", str(plan), "--json", cwd=tmp_path, timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = json.loads(res.stdout)
    assert [r["run"] for r in rows] == [1, 2, 3] and all(r["result"] == "completed" for r in rows)
    rates = []
    for lv, row in zip(LEVELS, rows):
        run = json.loads((Path(row["run_dir"]) / "run.json").read_text())
        asked = run["parameters"]["requested"]["topology"]["acquisition"]["rp1"]["source"]["trigger"]["level"]
        assert asked == lv and run["parameters"]["requested"]["overrides"]["acquisition.rp1.source.trigger.level"] == lv
        assert run["parameters"]["hardware"]["rp1"]["trigger_level"] == pytest.approx(lv, abs=1e-3)
        saved = yaml.safe_load((Path(row["run_dir"]) / "topology.yaml").read_text())
        assert saved["acquisition"]["rp2"]["source"]["trigger"]["level"] == lv
        rates.append(row["rate_hz"])
    assert rates[0] > rates[1] > rates[2] > 0, rates
    progress = json.loads((tmp_path / "runs" / "batch-plan.json").read_text())["runs"]
    assert len(progress) == 3


def test_bad_plans_are_refused_before_any_run(tmp_path: Path) -> None:
    write_topology(tmp_path, board_topology())
    plan = scan_plan()
    plan["runs"][1]["set"]["acquisition.rp1.source.trigger.lvl"] = 0.2
    plan["runs"][2]["set"]["acquisition.rp2.source.trigger.level"] = "high"
    plan["runs"].append({"name": "x", "repeat": 0, "until": {"histogram": "nope", "entries": 5}})
    path = write_plan(tmp_path, plan)
    res = run_cli("batch", str(path), cwd=tmp_path, timeout=60)
    assert res.returncode == 2
    text = res.stderr
    lines = path.read_text().splitlines()
    for key, message in (("acquisition.rp1.source.trigger.lvl", "unknown parameter"),
                         ("acquisition.rp2.source.trigger.level", "expected a number"),
                         ("repeat", "expected a whole number >= 1")):
        hit = next(line for line in text.splitlines() if key in line and message in line)
        number = int(hit.split(":")[1])         # plan.yaml:LINE: key: message
        assert key.rsplit(".", 1)[-1] in lines[number - 1], (hit, lines[number - 1])
    assert "no histogram 'nope'" in text
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").glob("sys-*"))


@pytest.mark.parametrize("policy", ["continue", "stop"])
def test_a_failed_run_is_recorded_and_the_batch_follows_its_policy(tmp_path: Path, policy: str,
                                                                  clean_system) -> None:
    from conftest import free_port
    write_topology(tmp_path, board_topology())
    plan = {"topology": "topo.yaml", "on_failure": policy, "defaults": {"frames": 30},
            "runs": [{"name": "ok"},
                     {"name": "no-board", "set": {"acquisition.rp2.source.address": "127.0.0.1",
                                                  "acquisition.rp2.source.port": free_port()}},
                     {"name": "after"}]}
    res = run_cli("batch", str(write_plan(tmp_path, plan)), "--json", cwd=tmp_path, timeout=180)
    assert res.returncode == 1, res.stderr[-3000:]
    rows = json.loads(res.stdout)
    assert [r["result"] for r in rows] == (["completed", "failed", "completed"] if policy == "continue"
                                           else ["completed", "failed"])
    assert "rp2" in rows[1]["message"]


def test_ctrl_c_stops_the_run_cleanly_and_the_batch_resumes(tmp_path: Path, clean_system) -> None:
    write_topology(tmp_path, board_topology())
    plan = write_plan(tmp_path, {"topology": "topo.yaml", "defaults": {"duration": 30.0, "frames": 0},
                                 "runs": [{"name": "first", "duration": 1.0}, {"name": "long"},
                                          {"name": "last", "duration": 1.0}]})
    proc = subprocess.Popen(coordinator_cmd("batch", str(plan), "--json"), cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60      # until the second run is acquiring
        while time.monotonic() < deadline and not (tmp_path / "runs" / "sys-00002" / "live.json").exists():
            time.sleep(0.1)
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    rows = json.loads(out)
    assert [(r["name"], r["result"]) for r in rows] == [("first", "completed"), ("long", "interrupted")]
    interrupted = json.loads((tmp_path / "runs" / "sys-00002" / "run.json").read_text())
    assert interrupted["stop_reason"] == "interrupted" and interrupted["books"]["balanced"]
    assert interrupted["books"]["saved"] > 0
    # again: the first run is not repeated; the interrupted one and the rest are done
    plan.write_text(plan.read_text().replace("duration: 30.0", "duration: 1.0"))   # (quicker; an edited entry counts as new)
    res = run_cli("batch", str(plan), "--json", cwd=tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = json.loads(res.stdout)
    assert [(r["name"], r["run"], bool(r.get("skipped"))) for r in rows] == \
        [("first", 1, True), ("long", 3, False), ("last", 4, False)]
    assert "resuming: 1 of 3 runs done before" in res.stderr
