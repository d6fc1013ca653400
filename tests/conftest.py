"""Shared test helpers: run the real command line, check that nothing outlives a test."""
from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import psutil
import pytest
import yaml

SHM = Path("/dev/shm")
NODE_MARKERS = ("acqnode", "procnode", "coordinator.emulated")


def ring_segments(folder: Path | None = None) -> set[str]:
    """Ring segments present; with `folder`, only those whose owner runs in it or is dead (a leak)."""
    names = {p.name for p in SHM.glob("daqring-*")}
    if folder is None:
        return names
    out = set()
    for name in names:
        try:
            owner = psutil.Process(int(name.split("-")[1]))
            if str(owner.cwd()).startswith(str(folder)):
                out.add(name)
        except (psutil.NoSuchProcess, psutil.ZombieProcess, ValueError, IndexError):
            out.add(name)
        except psutil.AccessDenied:
            pass
    return out


def node_processes() -> list[psutil.Process]:
    """Node processes (acqnode, procnode, readers) started by this test process, alive or zombie."""
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if any(m in " ".join(p.cmdline()) for m in NODE_MARKERS) and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            pass
    return out


def orphan_nodes(since: float, folder: Path) -> list[str]:
    """Node processes created after `since` whose working folder is inside `folder`.

    Looks at the whole machine because a killed coordinator's children are reparented;
    the folder (tests run the coordinator in their tmp_path, nodes inherit it) keeps
    other sessions' nodes out of it.
    """
    out = []
    for p in psutil.process_iter(["cmdline", "create_time", "pid", "cwd"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
            if p.info["create_time"] >= since - 1 and any(f"-m {m}" in cmd for m in NODE_MARKERS) \
                    and str(p.info["cwd"] or "").startswith(str(folder)) \
                    and p.status() != psutil.STATUS_ZOMBIE:
                out.append(f"{p.info['pid']}: {cmd[:120]}")
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            pass
    return out


@pytest.fixture
def clean_system(tmp_path):
    """Fails the test if it leaves a node process or a ring segment behind."""
    before = ring_segments()
    t0 = time.time()
    yield
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and (orphan_nodes(t0, tmp_path) or ring_segments(tmp_path) - before):
        time.sleep(0.1)
    left_procs = orphan_nodes(t0, tmp_path)
    left_segs = ring_segments(tmp_path) - before
    for seg in left_segs:  # do not poison the next tests
        (SHM / seg).unlink(missing_ok=True)
    for line in left_procs:
        try:
            psutil.Process(int(line.split(":")[0])).kill()
        except psutil.NoSuchProcess:
            pass
    assert not left_procs, f"node processes left: {left_procs}"
    assert not left_segs, f"ring segments left: {left_segs}"


def small_topology(**overrides: Any) -> dict:
    """A fast topology: one synthetic acquisition node, two processing nodes."""
    topo = {
        "topology": 1,
        "name": "t",
        "run": {"directory": "runs", "frames": 2000, "drain_timeout": 3.0},
        "streams": {"pulses": {"samples": 512, "channels": {"IN1": "int16", "IN2": "int16"}}},
        "acquisition": {"synth1": {"stream": "pulses", "ring": {"slots": 64},
                                   "source": {"kind": "synthetic", "rate": "max", "seed": 7}}},
        "processing": {"proc1": {}, "proc2": {}},
    }
    for path, value in overrides.items():
        node = topo
        keys = path.split(".")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        if value is None:
            node.pop(keys[-1], None)
        else:
            node[keys[-1]] = value
    return topo


def write_topology(tmp_path: Path, topo: dict, name: str = "topo.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(topo, sort_keys=False))
    return path


def coordinator_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "coordinator.cli", *args]


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 90,
            env: dict | None = None, wrap: list[str] = ()) -> subprocess.CompletedProcess:
    """The coordinator's command line; `wrap` runs it through another command (a namespace)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([*wrap, *coordinator_cmd(*args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=full_env, stdin=subprocess.DEVNULL)


def run_json(topo_path: Path, *extra: str, env: dict | None = None, timeout: float = 90,
             wrap: list[str] = ()) -> tuple[subprocess.CompletedProcess, dict | None]:
    res = run_cli("run", str(topo_path), "--json", *extra, cwd=topo_path.parent, env=env, timeout=timeout,
                  wrap=wrap)
    try:
        summary = json.loads(res.stdout)
    except json.JSONDecodeError:
        summary = None
    return res, summary


def run_disturbed(topo_path: Path, action, *extra: str, wrap: list[str] = (),
                  timeout: float = 90) -> tuple[int, dict | None, str]:
    """Run the coordinator on `topo_path`, call `action(proc)` while it runs (it waits for what
    it needs and does the harm), then collect (exit status, summary, stderr); never leaves the
    coordinator running."""
    proc = subprocess.Popen([*wrap, *coordinator_cmd("run", str(topo_path), "--json", *extra)],
                            cwd=topo_path.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        action(proc)
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    try:
        summary = json.loads(out)
    except json.JSONDecodeError:
        summary = None
    return proc.returncode, summary, err


@pytest.fixture
def testnet(request):
    """Hosts in network namespaces (tests/testnet.py), removed afterwards; the test names its
    hosts with `@pytest.mark.hosts("ctl", "a1", ...)`.  Skips, saying why, where namespaces
    cannot be made (not root, no iproute2)."""
    from testnet import TestNet, available
    why = available()
    if why:
        pytest.skip(why)
    marker = request.node.get_closest_marker("hosts")
    net = TestNet(f"dq{os.getpid() % 100000}", list(marker.args if marker else ("ctl", "a1", "p1")))
    net.up()
    try:
        yield net
    finally:
        net.down()


def on_hosts(topo: dict, net, placement: dict[str, str], coordinator: str = "ctl") -> dict:
    """`topo` spread over the namespace hosts of `net`: node -> host in `placement`, each host
    started by the `ip netns exec` template, the coordinator's control socket on its host
    (run the coordinator there: `wrap=net.exec_prefix(coordinator)`)."""
    launch = f"ip netns exec {net.prefix}-{{host}} {{command}}"
    topo.setdefault("control", {})["address"] = net.addresses[coordinator]
    topo["hosts"] = {h: {"address": net.addresses[h], "launch": launch} for h in sorted(set(placement.values()))}
    for role in ("acquisition", "processing"):
        for name, node in topo.get(role, {}).items():
            if name in placement:
                node["host"] = placement[name]
    return topo


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_process(parent_pid: int, *needles: str, timeout: float = 20) -> psutil.Process:
    """The descendant of `parent_pid` whose command line contains every needle; of several (a
    launch wrapper such as `sh -c '... --name p2'` and the node it starts), the innermost."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = []
        for child in psutil.Process(parent_pid).children(recursive=True):
            try:
                cmd = " ".join(child.cmdline())
                if all(n in cmd for n in needles):
                    found.append((len(child.parents()), child))
            except psutil.Error:
                pass
        if found:
            return max(found, key=lambda f: f[0])[1]
        time.sleep(0.05)
    raise AssertionError(f"no process {needles} under {parent_pid} within {timeout} s")


def wait_for_frames(run_root: Path, node: str, at_least: int, timeout: float = 20) -> None:
    """Until the running run's stats.csv shows `node` with more than `at_least` frames (data flows)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = next(iter(run_root.glob("*/stats.csv")), None)
        rows = stats.read_text().splitlines()[1:] if stats else []
        if any(r.split(",")[1] == node and int(r.split(",")[4]) > at_least for r in rows):
            return
        time.sleep(0.05)
    raise AssertionError(f"{node} did not pass {at_least} frames within {timeout} s")


def wait_for_system_frames(system: Any, node: str, at_least: int = 1, timeout: float = 20) -> None:
    """Until a `System`'s live counters show `node` with `at_least` frames in its ring."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if system.counters().get(node, {}).get("counters", {}).get("frames", 0) >= at_least:
            return
        time.sleep(0.05)
    raise AssertionError(f"{node} did not reach {at_least} frames within {timeout} s")


def books_by_seq(summary: dict) -> dict[str, dict[str, np.ndarray]]:
    """module -> {"saved": seqs, cause: seqs}; asserts each module's seqs 0..produced-1 are
    each saved once or missing once."""
    run_dir = Path(summary["run_dir"])
    out: dict[str, dict[str, list]] = {}
    for f in sorted(p for p in run_dir.rglob("*.h5") if p.name != "run.h5"):
        with h5py.File(f, "r", libver="latest", swmr=True) as h:
            g = h["entry/pulses"]
            names = [n.decode() if isinstance(n, bytes) else n for n in g["module"].attrs["names"]]
            seq, module = g["seq"][()], g["module"][()]
            for i, m in enumerate(names):
                out.setdefault(m, {}).setdefault("saved", []).append(seq[module == i])
    with open(run_dir / "missing.csv") as fh:
        for row in csv.DictReader(fh):
            out.setdefault(row["module"], {}).setdefault(row["cause"], []).append(
                np.arange(int(row["seq_first"]), int(row["seq_last"]) + 1))
    books = {m: {c: np.concatenate(v).astype(np.int64) for c, v in by.items()} for m, by in out.items()}
    for m, info in summary["books"]["modules"].items():
        every = np.sort(np.concatenate(list(books.get(m, {}).values()) or [np.array([], np.int64)]))
        assert np.array_equal(every, np.arange(info["produced"])), (m, {c: len(v) for c, v in books[m].items()},
                                                                    info["produced"])
    return books


CHROMIUM = Path("/usr/bin/chromium")
needs_chromium = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (apt-get install chromium)")


def chromium(url: str, profile: Path, *args: str) -> bytes:
    """Run headless Chromium on `url` (JS runs for 3 s of virtual time); its stdout.
    Its whole process group goes if it hangs."""
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--window-size=1200,900", "--virtual-time-budget=3000", *args, url]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=60)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)       # helpers (zygote, gpu) left behind, if any
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)
    return out
