"""The run's terminal dashboard: the live view at two widths, the plain lines of a batch job,
and a real run whose stderr is not a terminal."""
from __future__ import annotations

import io
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console

from coordinator.dashboard import LiveDisplay, PlainLines, node_table, render
from coordinator.rundir import RunDirectory
from coordinator.session import NodeStatus
from coordinator.statemachine import StateMachine
from coordinator.topology import load_topology
from conftest import run_cli, small_topology, write_topology

LOOPBACK = Path(__file__).parent.parent / "topologies" / "loopback.yaml"
LOG = [f"2024-05-01 12:00:0{i} rp1 INFO acqnode: log line number {i}" for i in range(8)]
NOW = 1000.0


def acq(name: str, frames: int, **counters) -> NodeStatus:
    n = NodeStatus(name, "acquisition", "local", state="running", registered=True)
    n.counters = {"frames": frames, "sent_frames": frames - 10, "sent_bytes": frames * 16384,
                  "ring_fill": 192, "ring_slots": 256, "overflow": 0, "credits": 12, "rejected": 0,
                  "reader_cpu_s": 1.0, "stalled_s": {"proc1": 0.75, "proc2": 0.5}, "cpu_s": 2.0,
                  "rss_bytes": 80_000_000, "reader_rss_bytes": 60_000_000,
                  "reader_shared_bytes": 20_000_000, "rejected_control": 0, "refused": 0, **counters}
    n.rates = {"frames_per_s": 2000.0, "MB_per_s": 32.8, "cpu_percent": 41.0}
    return n


def proc(name: str, frames: int, saved: int, **kw) -> NodeStatus:
    n = NodeStatus(name, "processing", "local", state="running", registered=True, **kw)
    n.counters = {"frames": frames, "recv_bytes": frames * 16384, "saved": saved, "rejected": 0,
                  "cpu_s": 1.0, "rss_bytes": 120_000_000, "rejected_control": 0, "refused": 0}
    n.rates = {"frames_per_s": 1000.0, "MB_per_s": 16.4, "cpu_percent": 20.0}
    return n


def fake_coordinator(tmp_path: Path, extra_nodes: int = 0) -> SimpleNamespace:
    """What the display reads of a Coordinator: the loopback topology, a run directory with a
    log, the state machine, and the node statuses (rp1 half-way, proc2 lost)."""
    topo = load_topology(LOOPBACK)
    assert topo.run.frames == 2000 and topo.run.duration is None
    rundir = RunDirectory(tmp_path / "loopback-00007", 7)
    rundir.path.mkdir()
    rundir.log_path.write_text("\n".join(LOG) + "\n")
    sm = StateMachine()
    sm.fire("configure")
    sm.fire("start")
    nodes = [acq("rp1", 1000, overflow=3), acq("rp2", 1000), proc("proc1", 1500, 1400),
             proc("proc2", 400, 380, lost=True, lost_reason="node 'proc2' silent for 3.0 s")]
    nodes[3].counters["rejected"] = 2
    nodes += [proc(f"proc{i}", 100, 90) for i in range(3, 3 + extra_nodes)]
    return SimpleNamespace(topo=topo, rundir=rundir, sm=sm, stop_reason="", run_started=NOW - 75.0, run_no=1,
                           nodes={n.name: n for n in nodes})


def rendered(coord, width: int, height: int = 40) -> str:
    console = Console(record=True, width=width, height=height, force_terminal=True, file=io.StringIO())
    console.print(render(coord, width, height, now=NOW))
    return console.export_text()


def table_header(text: str) -> str:
    return next(ln for ln in text.splitlines() if "frames/s" in ln)


def test_wide_view_shows_every_column_progress_and_log(tmp_path):
    coord = fake_coordinator(tmp_path)
    text = rendered(coord, 160)
    head = table_header(text)
    for col in ("node", "role", "host", "state", "frames", "frames/s", "MB/s", "ring", "credits",
                "dead", "losses", "CPU %", "mem"):
        assert col in head, col
    for name in ("rp1", "rp2", "proc1", "proc2"):
        assert re.search(rf"^\s*{name}\s", text, re.M), name
    assert "loopback run 7" in text and "running" in text and "0:01:15" in text
    assert "saved 1,780 frames" in text                        # 1400 + 380 (the lost node's too)
    assert "50%" in text and "2,003 / 4,000 produced" in text  # toward 2000 per board (overflow too)
    proc2 = next(ln for ln in text.splitlines() if re.match(r"\s*proc2\s", ln))
    assert "lost" in proc2 and "rej 2" in proc2
    rp1 = next(ln for ln in text.splitlines() if re.match(r"\s*rp1\s", ln))
    assert "192/256" in rp1 and "ovf 3" in rp1 and "1.2 s" in rp1 and "120 MB" in rp1   # 80 + 60 - 20
    assert "2,000" in rp1 and "32.8" in rp1 and "41" in rp1
    for line in LOG[-5:]:
        assert line in text
    assert LOG[-6] not in text


def test_lost_state_is_red(tmp_path):
    coord = fake_coordinator(tmp_path)
    console = Console(width=160, force_terminal=True, file=io.StringIO())
    segments = [s for s in console.render(node_table(coord, 160)) if s.text.strip() == "lost"]
    assert len(segments) == 1
    assert segments[0].style.color.name == "red" and segments[0].style.bold


def test_narrow_view_drops_columns_but_keeps_name_state_rate(tmp_path):
    coord = fake_coordinator(tmp_path)
    text = rendered(coord, 80)
    head = table_header(text)
    assert all(col in head for col in ("node", "state", "frames/s"))
    assert "host" not in head and "role" not in head and "mem" not in head
    assert all(len(ln) <= 80 for ln in text.splitlines())
    for name in ("rp1", "rp2", "proc1", "proc2"):
        assert re.search(rf"^\s*{name}\s", text, re.M), name
    proc2 = next(ln for ln in text.splitlines() if re.match(r"\s*proc2\s", ln))
    assert "lost" in proc2 and "1,000" in next(ln for ln in text.splitlines() if re.match(r"\s*proc1\s", ln))
    assert "50%" in text and LOG[-1] in text
    # very narrow: only the three that always stay
    head = table_header(rendered(coord, 30))
    assert head.split() == ["node", "state", "frames/s"]


def test_short_terminal_cuts_the_log_first(tmp_path):
    coord = fake_coordinator(tmp_path)
    tall, short, tiny = rendered(coord, 160, 40), rendered(coord, 160, 12), rendered(coord, 160, 8)
    assert sum(ln in tall for ln in LOG) == 5
    assert 0 < sum(ln in short for ln in LOG) < 5 and LOG[-1] in short
    assert sum(ln in tiny for ln in LOG) == 0 and "proc2" in tiny


def test_progress_by_duration_and_open_ended(tmp_path):
    coord = fake_coordinator(tmp_path)
    coord.topo = coord.topo.replace_run(frames=None, duration=300.0)
    assert "25%" in rendered(coord, 120) and "75 / 300 s" in rendered(coord, 120)
    coord.topo = coord.topo.replace_run(frames=None, duration=None)
    text = rendered(coord, 120)
    assert "open-ended" in text and "%" not in text.replace("CPU %", "")
    coord.topo = coord.topo.replace_run(frames=2000, duration=None)
    coord.nodes["rp1"].source_done = True                       # a node whose source ended is done
    assert "75%" in rendered(coord, 120)
    coord.stop_reason = "interrupted"                           # stopped: what was produced
    coord.sm.fire("stop", coord.stop_reason)
    coord.nodes["rp2"].source_done = True
    text = rendered(coord, 120)
    assert "stopping (interrupted)" in text and "50%" in text and "elapsed 0:00:00" in text


def test_live_display_redraws_at_most_every_refresh(tmp_path):
    coord = fake_coordinator(tmp_path)
    out = io.StringIO()
    clock = [0.0]
    display = LiveDisplay(Console(file=out, width=120, height=40, force_terminal=True), clock=lambda: clock[0])
    display.update(coord)
    first = len(out.getvalue())
    assert "rp1" in out.getvalue()
    display.update(coord)                      # within REFRESH: nothing drawn
    assert len(out.getvalue()) == first
    clock[0] = 1.0
    display.update(coord)
    assert len(out.getvalue()) > first
    display.close()
    assert display.live is None


def test_plain_lines_one_per_node_rate_limited(tmp_path):
    coord = fake_coordinator(tmp_path)
    out = io.StringIO()
    console = Console(file=out)
    assert not console.is_terminal
    clock = [100.0]
    display = PlainLines(console, period=5.0, clock=lambda: clock[0])
    coord.sm = StateMachine()                  # idle: nothing yet
    display.update(coord)
    assert out.getvalue() == ""
    coord.sm.fire("configure")
    coord.sm.fire("start")
    display.update(coord)
    lines = out.getvalue().splitlines()
    assert [ln.split()[1] for ln in lines] == ["rp1", "rp2", "proc1", "proc2"]
    assert re.fullmatch(r"\d\d:\d\d:\d\d rp1 running frames=1000 fps=2000 MB/s=32\.8 ring=192/256 credits=12 "
                        r"dead=1\.2s lost=ovf:3 cpu=41% rss=120MB", lines[0]), lines[0]
    assert re.fullmatch(r"\S+ proc2 lost frames=400 fps=1000 MB/s=16\.4 ring=- credits=- dead=- lost=rej:2 "
                        r"cpu=20% rss=120MB", lines[3]), lines[3]
    assert "\x1b" not in out.getvalue()
    for dt in (0.1, 1.0, 4.9):                 # rate-limited: nothing more within the period
        clock[0] = 100.0 + dt
        display.update(coord)
    assert len(out.getvalue().splitlines()) == 4
    clock[0] = 105.0
    display.update(coord)
    assert len(out.getvalue().splitlines()) == 8
    display.close()                            # the final counters
    assert len(out.getvalue().splitlines()) == 12
    display.close()
    assert len(out.getvalue().splitlines()) == 12


@pytest.mark.usefixtures("clean_system")
def test_real_run_without_terminal_prints_plain_lines(tmp_path):
    topo_path = write_topology(tmp_path, small_topology(**{"run.frames": 3000}))
    res = run_cli("run", str(topo_path), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if re.match(r"\d\d:\d\d:\d\d \S+ \S+ frames=", ln)]
    nodes = {ln.split()[1] for ln in lines}
    assert nodes == {"synth1", "proc1", "proc2"}, res.stderr
    assert len(lines) % 3 == 0 and len(lines) >= 6               # at least the first set and the last
    last = {ln.split()[1]: ln for ln in lines[-3:]}   # the final set, at the end of the run
    assert set(last) == {"synth1", "proc1", "proc2"}
    # the figures depend on how many 0.5 s stats messages such a short run saw; the form does not
    form = (r"\d\d:\d\d:\d\d (synth1|proc1|proc2) [a-z]+ frames=\d+ fps=\d+ MB/s=[\d.]+ ring=(\d+/64|-) "
            r"credits=(\d+|-) dead=([\d.]+s|-) lost=(0|[a-z:\d,]+) cpu=(\d+%|-) rss=(\d+MB|-)")
    assert all(re.fullmatch(form, ln) for ln in lines), lines
    assert all(" ring=- credits=- dead=- " in last[p] for p in ("proc1", "proc2")), last
    assert "\x1b[" not in res.stderr                              # no terminal control codes
    assert "saved" in res.stdout and "3,000" in res.stdout        # the summary table, as before
