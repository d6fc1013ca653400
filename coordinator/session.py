"""One acquisition run, driven from start to books: launch, configure, start, stop, drain, record.

The driver is a single thread.  `pump()` is its only way of waiting: it polls the
control socket, applies node messages, sends heartbeats, notices dead processes
and silent nodes, writes stats and refreshes the display.  Commands (Ctrl-C,
the API) are events appended to `self.events` and handled there, so state only
ever changes on this thread and through the transition table.
"""
from __future__ import annotations

import collections
import dataclasses
import ipaddress
import json
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import zmq

from coordinator.books import Books
from coordinator.control import ControlServer, StartupError
from coordinator.dispatch import DispatchSchedule, rebalance
from coordinator.emulated import StartupFailure, board_address, emulator_settings, start_emulator
from coordinator.flowchart import write_data_flow
from coordinator.plots import write_plots
from coordinator.launcher import Launcher
from coordinator.procutil import terminate
from coordinator.record import keep_record, salvage
from coordinator.security import Curve, Gatekeeper, SecurityError
from coordinator.rundir import MASTER_FILE, RunDirectory, last_lines, versions
from coordinator.statemachine import StateMachine
from coordinator.later import raw_only
from coordinator.topology import Topology, TopologyError

log = logging.getLogger("coordinator")

HEARTBEAT_INTERVAL = 0.5
STATS_INTERVAL = 1.0
RETRY_INTERVAL = 1.0
REBALANCE_INTERVAL = 2.0   # s between looks at which processing node holds the senders back
EXIT_OK, EXIT_FAILED, EXIT_DEGRADED, EXIT_INTERRUPTED = 0, 1, 3, 130
#: Node messages about one run: when their run is not the current one they are late, and ignored.
RUN_MESSAGES = {"configured", "started", "stats", "source_done", "eor", "error"}


@dataclass
class RunOptions:
    frames: int | None = None
    duration: float | None = None
    run_dir: Path | None = None
    loopback: bool = False


@dataclass
class NodeStatus:
    name: str
    role: str
    host: str
    proc: Any = None
    state: str = "launching"
    pid: int | None = None
    incarnation: str | None = None
    registered: bool = False
    last_seen: float = 0.0
    counters: dict = field(default_factory=dict)
    rates: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    eor: dict | None = None
    started: bool = False
    source_done: bool = False
    lost: bool = False
    lost_reason: str = ""
    errors: list[str] = field(default_factory=list)
    expect: dict = field(default_factory=dict)
    past: list = field(default_factory=list)     # earlier incarnations: lost, their files kept
    rejoining: bool = False
    said_ignored: bool = False
    configure_sent: bool = False
    _prev: tuple[float, dict] | None = None


class RunAborted(RuntimeError):
    pass


class RunInterrupted(RuntimeError):
    pass


def shipped_count(acq_report: dict | None, proc: str) -> int:
    """Frames an acquisition node says it sent to `proc` (what `proc` must wait for)."""
    return sum(b - a for a, b in (acq_report or {}).get("shipped", {}).get(proc, []))


class Coordinator:
    def __init__(self, topology: Topology, options: RunOptions | None = None,
                 display: Any = None) -> None:
        self.options = options or RunOptions()
        topo = topology
        if self.options.frames is not None or self.options.duration is not None:
            topo = topo.replace_run(frames=self.options.frames or topo.run.frames,
                                    duration=self.options.duration or topo.run.duration)
        if self.options.loopback and topo.hosts:
            topo = dataclasses.replace(topo, hosts={
                h: dataclasses.replace(c, address="127.0.0.1", launch="local") for h, c in topo.hosts.items()})
        if self.options.run_dir is not None:
            topo = topo.replace_run(directory=Path(self.options.run_dir).resolve())
        self.topo = topo
        self.display = display
        self.sm = StateMachine()
        self.events: collections.deque[str] = collections.deque()
        self.nodes: dict[str, NodeStatus] = {}
        for name, a in topo.acquisition.items():
            self.nodes[name] = NodeStatus(name, "acquisition", a.host)
        for name, p in topo.processing.items():
            self.nodes[name] = NodeStatus(name, "processing", p.host)
        self.stop_reason = ""
        self.shutting_down = False
        self.interrupted = False
        self.abort = False
        self.failure: str | None = None
        self.run_started = self.run_stopped = 0.0
        self.t0 = time.monotonic()
        self._next_hb = 0.0
        self._next_stats = 0.0
        self._next_balance = time.monotonic() + REBALANCE_INTERVAL
        self._stalled_seen: dict[str, dict[str, float]] = {}
        self.schedules: dict[str, DispatchSchedule] = {}
        self.books: Books | None = None
        self.emulator_proc: Any = None
        self.emulator_settings: dict | None = None
        self.boards: dict[str, list] = {}
        self.launcher: Launcher | None = None
        self.ctx: zmq.Context | None = None
        self.ctl: ControlServer | None = None
        self.gatekeeper: Gatekeeper | None = None
        self.poller = zmq.Poller()
        self.watched: dict = {}
        self.rundir: RunDirectory | None = None
        self.run_no = 0
        self.stats_file: Any = None
        self.stats_writer: Any = None
        self.node_log: Path | None = None        # where node processes write (log.txt, or the system log)
        self.work_dir: Path | None = None        # the emulator's ready file (a system of several runs)
        self.until: dict | None = None           # stop when a histogram has this many entries
        self.overrides: dict = {}                # this run's changes to the topology (key path: value)
        self.on_begin: Callable[[RunDirectory], None] | None = None   # a system's run has its folder
        self.pauses: list[dict] = []
        self.paused_since: float | None = None
        self.stop_requested = False
        self.log_handler: logging.Handler | None = None
        self.started_at = time.time()

    # ---------------------------------------------------------------- public entry
    def run(self) -> dict:
        """Execute one run with nodes launched for it; returns the summary (also in run.json)."""
        self._begin_run()
        self.node_log = self.rundir.log_path
        return self._conduct(launch=True)

    def run_next(self, topo: Topology, overrides: dict, until: dict | None = None) -> dict:
        """One more run of a system whose nodes are up (`open_system`), with `topo` (the
        system's topology with this run's `overrides`)."""
        self.topo, self.overrides, self.until = topo, overrides, until
        self._begin_run()
        return self._conduct(launch=False)

    def open_system(self, node_log: Path, work_dir: Path) -> None:
        """Launch every node once for runs in a row (the API, batch files)."""
        self.node_log, self.work_dir = node_log, work_dir
        self.sm = StateMachine()
        try:
            self._launch()
        except BaseException:
            self.close_system()
            raise

    def close_system(self) -> None:
        self._shutdown()

    def _begin_run(self) -> None:
        """A run directory with its log, topology, picture and stats; the run's state afresh."""
        self.rundir = RunDirectory.create(self.topo.run.directory, self.topo.name)
        self.run_no = self.rundir.number
        self.requested = self.topo.to_dict()
        self.rundir.write_topology(self.requested)
        handler = logging.FileHandler(self.rundir.log_path)
        handler.setFormatter(logging.Formatter("%(asctime)s coordinator %(levelname)s %(message)s"))
        logging.getLogger().addHandler(handler)
        logging.getLogger().setLevel(logging.INFO)
        self.log_handler = handler
        try:
            write_data_flow(self.topo, self.rundir.path)
        except Exception as exc:     # a picture must never cost a run
            log.warning("data_flow.svg not written: %s: %s", type(exc).__name__, exc)
        self.started_at = time.time()
        self.stats_file, self.stats_writer = self.rundir.open_stats()
        self.sm = StateMachine()
        self.events.clear()
        self.stop_reason, self.interrupted, self.abort, self.failure = "", False, False, None
        self.stop_requested, self.pauses, self.paused_since = False, [], None
        self.run_started, self.run_stopped = 0.0, 0.0
        self.schedules, self.books, self._stalled_seen = {}, None, {}
        for n in self.nodes.values():
            n.counters, n.rates, n.info, n.eor, n._prev = {}, {}, {}, None, None
            n.started = n.source_done = n.rejoining = n.said_ignored = n.configure_sent = False
            n.errors, n.expect, n.past = [], {}, []
        log.info("run %s in %s", self.rundir.number, self.rundir.path)
        if self.on_begin is not None:
            self.on_begin(self.rundir)

    def _conduct(self, launch: bool) -> dict:
        main = threading.current_thread() is threading.main_thread()
        if main:
            old_int = signal.signal(signal.SIGINT, self._on_sigint)
            old_term = signal.signal(signal.SIGTERM, self._on_sigint)
        try:
            if launch:
                self._launch()
            else:
                self._prepare_nodes()
            self._execute()
        except RunInterrupted as exc:
            log.warning("%s", exc)
            if self.sm.can("fault"):
                self.sm.fire("fault", str(exc))
        except (StartupError, RunAborted) as exc:
            self.failure = str(exc)
            log.error("%s", exc)
            if self.sm.can("fault"):
                self.sm.fire("fault", str(exc))
        except Exception as exc:   # a bug: still clean up and keep the record
            self.failure = f"internal error: {type(exc).__name__}: {exc}"
            log.exception("internal error")
            if self.sm.can("fault"):
                self.sm.fire("fault", self.failure)
        finally:
            if main:
                signal.signal(signal.SIGINT, old_int)
                signal.signal(signal.SIGTERM, old_term)
            (self.rundir.path / "live.json").unlink(missing_ok=True)
            if launch:
                self._shutdown()
            else:
                self._settle()
            try:
                summary = self._record()
            finally:
                self.stats_file.close()
                self.stats_file = self.stats_writer = None
                logging.getLogger().removeHandler(self.log_handler)
                self.log_handler.close()
                if self.display is not None:
                    self.display.run_ended(self)
        return summary

    # ---------------------------------------------------------------- phases
    def _check_launchable(self) -> None:
        """Before anything starts: nodes on other hosts can reach the coordinator, and say
        when data and control sockets are open to a network without authentication."""
        ctl = self.topo.control.address
        far = sorted({h for h in (n.host for n in self.nodes.values()) if h in self.topo.hosts
                      and not _loopback(self.topo.hosts[h].address)})
        if far and _loopback(ctl):
            raise StartupError(f"nodes on {', '.join(far)} cannot reach the coordinator at {ctl}: set "
                               f"control.address to this machine's address on their network (or run "
                               f"with --loopback to map every host to this machine)")
        if far and self.topo.security == "none":
            log.warning("nodes on %s listen on network addresses without authentication: anyone on that "
                        "network can send them frames or commands (security: curve turns on authentication)", ", ".join(far))

    def _launch(self) -> None:
        """Context, control server, emulator and every node process, up to their registration."""
        self._check_launchable()
        known = set(self.nodes)
        curve = None
        self.ctx = zmq.Context()
        if self.topo.security == "curve":
            try:
                curve = Curve.load(self.topo.keys)
            except SecurityError as exc:
                raise StartupError(f"security: curve: {exc}") from None
            self.gatekeeper = Gatekeeper(self.ctx, curve)
        self.ctl = ControlServer(self.ctx, self.topo.control.address, self.topo.control.port, known, curve)
        self.poller.register(self.ctl.sock, zmq.POLLIN)
        if self.gatekeeper is not None:
            self.gatekeeper.watch(self.ctl.sock, self.ctl.endpoint)
            self.watched = self.gatekeeper.handlers()
            for sock in self.watched:
                self.poller.register(sock, zmq.POLLIN)
        self.launcher = Launcher(self.topo.hosts, self.topo.keys if curve else None)
        self._start_emulator()
        for n in self.nodes.values():
            self._launch_node(n)
        self._wait(list(self.nodes.values()), lambda n: n.registered, self.topo.run.start_timeout, "registration")

    def _launch_node(self, n: NodeStatus) -> None:
        n.proc = self.launcher.launch(n.name, n.role, n.host, self.ctl.endpoint, self.node_log)
        n.pid = n.proc.pid if n.proc is not None else None

    def _start_emulator(self) -> None:
        settings = emulator_settings(self.topo) if self.topo.emulated_boards() else None
        if settings == self.emulator_settings and (settings is None or self.emulator_proc.poll() is None):
            return
        if self.emulator_proc is not None:
            log.info("starting the board emulator again (its settings changed, or it had ended)")
            terminate([self.emulator_proc], grace=2.0)
            self.emulator_proc, self.boards = None, {}
        self.emulator_settings = settings
        if settings is None:
            return
        ready_dir = self.work_dir or self.rundir.path
        (ready_dir / "emulator.json").unlink(missing_ok=True)
        try:
            self.emulator_proc, ports = start_emulator(self.topo, ready_dir, self.node_log, self.launcher)
        except StartupFailure as exc:
            self.emulator_settings = None
            raise StartupError(str(exc)) from None
        self.boards = {b: board_address(self.topo, b, ports) for b in ports}
        log.info("emulated boards: %s", ", ".join(f"{b} at {h}:{p}" for b, (h, p) in self.boards.items()))

    def _prepare_nodes(self) -> None:
        """Before a run of a system: nodes lost since the last run are launched again, and the
        emulator follows its settings."""
        self._start_emulator()
        gone = [n for n in self.nodes.values() if n.lost or n.state == "exited"]
        for n in gone:
            log.warning("%s is launched again (%s)", n.name, n.lost_reason or "it had left")
            if n.proc is not None and n.proc.poll() is None:
                terminate([n.proc], grace=1.0)
            n.lost, n.lost_reason, n.registered, n.state, n.incarnation = False, "", False, "launching", None
            self._launch_node(n)
        self._wait(gone, lambda n: n.registered, self.topo.run.start_timeout, "registration")

    def _settle(self) -> None:
        """After a run of a system: a node that did not end the run (no end-of-run report) is
        shut down, to be launched afresh for the next run; the others wait for it."""
        stuck = [n for n in self.nodes.values() if n.configure_sent and n.eor is None and not n.lost]
        for n in stuck:      # written off first: its exit is expected, its last words are not news
            n.lost, n.said_ignored = True, True
            n.lost_reason = f"it did not end run {self.run_no}; launched again for the next run"
            log.warning("%s: %s", n.name, n.lost_reason)
            self.ctl.send(n.name, "shutdown")
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline and any(n.proc is not None and n.proc.poll() is None for n in stuck):
            self.pump(0.05)
        terminate([n.proc for n in stuck if n.proc is not None], grace=1.0)

    def _execute(self) -> None:
        """Configure, start, run until a stop condition, drain (nodes registered)."""
        if self.topo.run.process == "later":      # raw frames only; `daq-coordinator process` later
            try:
                self.topo = raw_only(self.topo)
            except TopologyError as exc:
                raise StartupError(str(exc)) from None
        timeout = self.topo.run.start_timeout
        boards = self.boards
        resolved = self.topo.to_dict()
        base = {"run": self.rundir.number, "topology": resolved, "run_dir": str(self.rundir.path)}
        self.base = base
        acqs = [n for n in self.nodes.values() if n.role == "acquisition"]
        procs = [self.nodes[p] for p in self.topo.processing_order()]
        self.schedules = self._initial_schedules()
        for n in acqs:
            n.configure_sent = True
            self.ctl.send(n.name, "configure", **base, params={
                "frames": self.topo.frames_limit(n.name), "boards": boards,
                "schedule": {s: d.to_dict() for s, d in self.schedules.items()}})
        self._wait(acqs, lambda n: bool(n.info), timeout, "configuration of acquisition nodes")
        endpoints = {n.name: n.info["endpoint"] for n in acqs}
        for level in self.topo.processing_levels():   # a chain's next stage needs this one's endpoint
            group = [self.nodes[p] for p in level]
            for n in group:
                n.configure_sent = True
                self.ctl.send(n.name, "configure", **base, params={"endpoints": endpoints})
            self._wait(group, lambda n: bool(n.info), timeout, "configuration of processing nodes")
            endpoints.update({n.name: n.info["forward_endpoint"] for n in group if n.info.get("forward_endpoint")})
        self.endpoints = endpoints
        self._write_live()
        self.sm.fire("configure")

        epoch_ns = self.epoch_ns = time.time_ns()   # the run's time zero: board timestamps count from it
        for group in (procs, acqs):   # receivers first, so credit is there when frames come
            for n in group:
                self.ctl.send(n.name, "start", epoch_ns=epoch_ns)
            self._wait(group, lambda n: n.started, timeout, "start")
        self.sm.fire("start")
        self.run_started = time.monotonic()
        log.info("running")

        duration = self.topo.run.duration
        while not self.stop_reason:
            self.pump(0.1)
            if self.abort:
                self.stop_reason = "abort"
            elif self.failure:
                self.stop_reason = "fault"
            elif self.interrupted:
                self.stop_reason = "interrupted"
            elif self.stop_requested:
                self.stop_reason = "stopped"
            elif all(n.source_done or n.lost for n in acqs):
                one_shot = all(self.topo.acquisition[n.name].ring.capture == "one-shot" for n in acqs)
                self.stop_reason = ("one-shot capture" if one_shot
                                    else "frames" if self.topo.run.frames else "sources ended")
            elif duration is not None and self.live_seconds() >= duration:
                self.stop_reason = "duration"
            elif self.until is not None and self.histogram_entries(self.until["histogram"]) >= self.until["entries"]:
                self.stop_reason = f"histogram {self.until['histogram']} reached {self.until['entries']} entries"
        if self.paused_since is not None:
            self._end_pause()
        self.run_stopped = time.monotonic()
        self.sm.fire("stop", self.stop_reason)
        log.info("stopping (%s)", self.stop_reason)
        self._drain(acqs, procs)
        self.sm.fire("drained")
        if self.failure:
            raise RunAborted(self.failure)

    def _write_live(self) -> None:
        """live.json: where the nodes' taps are, for `daq-coordinator view RUN_DIR` (removed at the end)."""
        taps = {n.name: n.info["tap"] for n in self.nodes.values() if n.info.get("tap")}
        try:
            tmp = self.rundir.path / "live.json.tmp"
            tmp.write_text(json.dumps({"run": self.run_no, "name": self.topo.name, "taps": taps}))
            tmp.replace(self.rundir.path / "live.json")
        except OSError as exc:
            log.warning("live.json not written (no live view of this run): %s", exc)

    def live_seconds(self) -> float:
        """Time the run has been acquiring: since its start, without its pauses."""
        if not self.run_started:
            return 0.0
        now = self.run_stopped or time.monotonic()
        paused = sum(p["seconds"] for p in self.pauses) + (now - self.paused_since if self.paused_since else 0.0)
        return now - self.run_started - paused

    def histogram_entries(self, name: str) -> int:
        """Entries of histogram `name` so far, over every processing node (their stats)."""
        return sum(int((n.counters.get("histograms") or {}).get(name, 0))
                   for n in self.nodes.values() if n.role == "processing")

    def _pause(self) -> None:
        if not self.sm.can("pause"):
            log.warning("pause refused: the run is %s", self.sm.state)
            return
        self.sm.fire("pause")
        self.paused_since = time.monotonic()
        for n in self.nodes.values():
            if n.role == "acquisition" and not n.lost:
                self.ctl.send(n.name, "pause")
        log.warning("paused: no frames are acquired until resume")

    def _resume(self) -> None:
        if not self.sm.can("resume"):
            log.warning("resume refused: the run is %s", self.sm.state)
            return
        self.sm.fire("resume")
        for n in self.nodes.values():
            if n.role == "acquisition" and not n.lost:
                self.ctl.send(n.name, "resume")
        seconds = self._end_pause()
        log.warning("resumed after a pause of %.1f s", seconds)

    def _end_pause(self) -> float:
        now = time.monotonic()
        seconds = now - self.paused_since
        self.pauses.append({"start_s": round(self.paused_since - self.run_started, 3), "seconds": round(seconds, 3)})
        self.paused_since = None
        return seconds

    def _drain(self, acqs: list[NodeStatus], procs: list[NodeStatus]) -> None:
        """Stop sources, let frames in flight arrive, collect every node's end-of-run report.

        Processing nodes end in chain order: a second stage learns how many events to expect
        from the first stage's report.  Requests are re-sent until answered: the end of a run
        never hangs on one message.
        """
        limit = self.topo.run.drain_timeout + 5.0
        self._request_until(acqs, "stop", {"reason": self.stop_reason}, limit)
        for level in self.topo.processing_levels():
            group = [self.nodes[p] for p in level]
            for n in group:
                n.expect = {up: (shipped_count(self.nodes[up].eor, n.name) if up in self.topo.acquisition
                                 else (self.nodes[up].eor or {}).get("forward_counts", {}).get(n.name, 0))
                            for up in self.topo.upstreams(n.name)}
            self._request_until(group, "end", None, limit)

    def _rebalance(self) -> None:
        """Move future blocks of a scheduled stream away from a processing node that falls behind."""
        for stream, schedule in self.schedules.items():
            mods = [self.nodes[m] for m in self.topo.streams[stream].modules]
            stalled: dict[str, float] = {}
            for n in mods:
                now_s = n.counters.get("stalled_s", {}) or {}
                before = self._stalled_seen.get(n.name, {})
                for p, t in now_s.items():
                    stalled[p] = max(stalled.get(p, 0.0), t - before.get(p, 0.0))
                self._stalled_seen[n.name] = dict(now_s)
            frontier = self._frontier(stream)
            # below this seq every module has sent all: a cut is judged on a deal fully in force
            sent = min((n.counters.get("sent_frames", 0) for n in mods if not n.lost), default=0)
            new = rebalance(schedule, stalled, REBALANCE_INTERVAL, frontier, sent=sent)
            if new is not None:
                log.warning("stream %s: %s falls behind; from block %d blocks are dealt %s", stream,
                            max(stalled, key=stalled.get), schedule.epochs[-1][0], new)
                for n in mods:
                    self.ctl.send(n.name, "schedule", stream=stream, schedule=schedule.to_dict())

    def _frontier(self, stream: str) -> int:
        """A seq that no module of `stream` has sent yet, with margin (ring, 2 s of frames, a block):
        a change of dispatch from there on reaches every module before its frames do."""
        mods = [self.nodes[m] for m in self.topo.streams[stream].modules]
        ring = max(self.topo.acquisition[n.name].ring.slots for n in mods)
        rate = max(n.rates.get("frames_per_s", 0.0) for n in mods)
        block = self.topo.streams[stream].dispatch_block
        return max(n.counters.get("frames", 0) for n in mods) + ring + int(2 * rate) + block

    def _initial_schedules(self) -> dict[str, DispatchSchedule]:
        """Dispatch schedules of the streams whose events need every part on one node."""
        out = {}
        for s in self.topo.streams.values():
            if s.scheduled:
                receivers = [p for p in self.topo.processing if s.modules[0] in self.topo.upstreams(p)]
                out[s.name] = DispatchSchedule.start(s.dispatch_block, receivers)
        return out

    def _request_until(self, nodes: list[NodeStatus], t: str, fields: dict | None, limit: float) -> None:
        deadline = time.monotonic() + (0.0 if self.abort else limit)
        last = -RETRY_INTERVAL
        while True:
            pending = [n for n in nodes if n.eor is None and not n.lost]
            if not pending or time.monotonic() > deadline or self.abort:
                break
            if time.monotonic() - last >= RETRY_INTERVAL:
                for n in pending:
                    self.ctl.send(n.name, t, **(fields if fields is not None else {"expect": n.expect}))
                last = time.monotonic()
            self.pump(0.05)
        for n in nodes:
            if n.eor is None and not n.lost and not self.abort:    # an abort asks for none
                log.error("%s sent no end-of-run report", n.name)

    # ---------------------------------------------------------------- the loop body
    def pump(self, timeout: float) -> None:
        # wake up when a node's silence reaches the limit, not up to `timeout` later (the
        # death-to-detection time is then the heartbeat timeout itself, not that plus a poll)
        silent = [n.last_seen for n in self.nodes.values() if n.registered and not n.lost and n.state != "exited"]
        if silent and not self.shutting_down:
            due = min(silent) + self.topo.run.heartbeat_timeout - time.monotonic()
            timeout = min(timeout, max(due + 0.001, 0.0))
        for sock, _ in self.poller.poll(int(timeout * 1000)):
            if sock is self.ctl.sock:
                for name, msg in self.ctl.receive():
                    self._on_message(self.nodes[name], msg)
            else:
                self.watched[sock]()
        now = time.monotonic()
        while self.events:
            self._on_event(self.events.popleft())
        if now >= self._next_hb:
            self._next_hb = now + HEARTBEAT_INTERVAL
            for n in self.nodes.values():
                if n.registered and not n.lost:
                    self.ctl.send(n.name, "heartbeat")
        self._check_liveness(now)
        if self.sm.state == "running" and now >= self._next_balance:
            self._next_balance = now + REBALANCE_INTERVAL
            self._rebalance()
        if now >= self._next_stats and self.stats_writer is not None:
            self._next_stats = now + STATS_INTERVAL
            self._write_stats()
        if self.display is not None:
            self.display.update(self)

    def _wait(self, nodes: list[NodeStatus], done: Callable[[NodeStatus], bool], timeout: float,
              what: str) -> None:
        """Until `done` holds for every node; a failure, a loss or the timeout says which nodes."""
        deadline = time.monotonic() + timeout
        while not all(done(n) for n in nodes):
            if self.abort or self.interrupted:
                self.interrupted = True
                raise RunInterrupted(f"interrupted during {what}")
            if self.failure:
                raise StartupError(self.failure)
            lost = [n for n in self.nodes.values() if n.lost]
            if lost:
                raise StartupError(f"during {what}: " + "; ".join(n.lost_reason for n in lost))
            if time.monotonic() > deadline:
                slow = [n.name for n in nodes if not done(n)]
                raise StartupError(f"{what} did not complete within {timeout:.0f} s "
                                   f"(waiting for: {', '.join(slow) or 'nodes'})")
            self.pump(0.05)

    def _on_message(self, n: NodeStatus, msg: dict) -> None:
        t = msg["t"]
        if n.lost:
            self._from_lost(n, msg)
            return
        n.last_seen = time.monotonic()
        if t in RUN_MESSAGES and msg.get("run", 0) not in (0, self.run_no):    # 0: not configured yet
            if t == "error":
                log.warning("%s (after its run %s): %s", n.name, msg.get("run"), msg["message"])
            return      # of an earlier run of this system (a late answer)
        if t == "hello":
            if n.registered and msg["incarnation"] != n.incarnation:
                log.warning("%s registered again as a new incarnation", n.name)
            n.registered, n.incarnation, n.pid = True, msg["incarnation"], msg["pid"]
            n.state = "registered"
        elif t == "configured":
            n.info = msg["info"] or {"ok": True}
            n.state = "configured"
            if n.rejoining:
                self.ctl.send(n.name, "start", epoch_ns=self.epoch_ns)
        elif t == "started":
            n.started = True
            if n.rejoining:
                self._rejoined(n)
        elif t == "stats":
            n.state = msg["state"]
            self._update_rates(n, msg["counters"])
        elif t == "source_done":
            n.source_done = True
            n.counters["produced"] = msg["produced"]
        elif t == "eor":
            n.eor = msg["report"]
        elif t == "error":
            n.errors.append(msg["message"])
            named = msg["message"].startswith(f"{n.name}: ")      # nodes name themselves
            log.error("%s%s", "" if named else f"{n.name}: ", msg["message"])
            if msg["fatal"] and self.failure is None:
                self.failure = msg["message"]
        elif t == "bye":
            n.state = "exited"

    def can_rejoin(self, n: NodeStatus) -> str:
        """Why a lost node cannot come back into this run ("" if it can).

        A processing node fed by acquisition nodes can: it starts afresh, and its senders deal it
        blocks again from a seq none has sent yet.  An acquisition node cannot: a restarted
        source counts its frames from 0 again, and its seqs would no longer name the same events
        as the other modules'.  A node in a chain cannot either: the nodes it talks to hold its
        old endpoint."""
        if self.sm.state != "running":
            return f"the run is {self.sm.state}"
        if n.role == "acquisition":
            return "an acquisition node's seqs would restart from 0 (its module stays missing from the loss on)"
        cfg = self.topo.processing[n.name]
        if cfg.forwards_to() or n.name in self.topo.chained():
            return "it is part of a processing chain"
        return ""

    def _from_lost(self, n: NodeStatus, msg: dict) -> None:
        """A message from a node declared lost: a new incarnation rejoins (if it can); anything
        else from the written-off incarnation is ignored (said once)."""
        if msg["t"] == "hello" and msg["incarnation"] != n.incarnation:
            why = self.can_rejoin(n)
            if why:
                log.warning("%s came back as a new incarnation but cannot rejoin: %s; told to shut down",
                            n.name, why)
                self.ctl.send(n.name, "shutdown")
                return
            n.past.append({"incarnation": n.incarnation, "pid": n.pid, "lost_reason": n.lost_reason,
                           "files": n.info.get("files", []), "counters": n.counters})
            k = len(n.past) + 1
            log.warning("%s is back as incarnation %d (%s, pid %s); configuring it", n.name, k,
                        msg["incarnation"], msg["pid"])
            n.lost, n.lost_reason, n.rejoining, n.said_ignored = False, "", True, False
            n.registered, n.incarnation, n.pid, n.proc = True, msg["incarnation"], msg["pid"], None
            n.state, n.info, n.started, n.eor, n.counters, n._prev = "registered", {}, False, None, {}, None
            n.last_seen = time.monotonic()
            self.ctl.send(n.name, "configure", **{**self.base, "run_dir": str(self.rundir.path / f"{n.name}-{k}")},
                          params={"endpoints": self.endpoints})
        elif not n.said_ignored:
            n.said_ignored = True
            log.warning("%s (the incarnation declared lost) is heard again; it stays out of the run", n.name)

    def _rejoined(self, n: NodeStatus) -> None:
        n.rejoining = False
        for a in self.topo.upstreams(n.name):
            stream = self.topo.streams[self.topo.acquisition[a].stream]
            block = stream.dispatch_block     # from a block's start: no block is split between nodes
            self.ctl.send(a, "peer_back", peer=n.name, from_seq=-(-self._frontier(stream.name) // block) * block)
        log.warning("%s rejoined the run", n.name)

    def _on_event(self, event: str) -> None:
        """Commands from Ctrl-C, the keyboard of the dashboard and the API (any thread)."""
        if event == "interrupt":
            if self.interrupted:
                log.warning("second interrupt: aborting without drain")
                self.abort = True
            self.interrupted = True
        elif event == "stop":
            self.stop_requested = True
        elif event == "abort":      # cut short like a second Ctrl-C: the run did not end as asked
            log.warning("abort: the run ends without waiting for frames in flight")
            self.abort = self.interrupted = True
        elif event == "pause":
            self._pause()
        elif event == "resume":
            self._resume()
        elif event == "toggle_pause":
            self._resume() if self.sm.state == "paused" else self._pause()

    def _on_sigint(self, signum: int, frame: Any) -> None:
        self.events.append("interrupt")

    def _check_liveness(self, now: float) -> None:
        for n in self.nodes.values():
            if n.lost or self.shutting_down:
                continue
            code = n.proc.poll() if n.proc is not None else None
            if code is not None:
                tail = " | ".join(last_lines(self.node_log or self.rundir.log_path, 3, f" {n.name} "))
                self._lose(n, f"node {n.name!r} exited with status {code}"
                              + (f"; last log lines: {tail}" if tail else ""))
            elif n.state == "exited" and n.proc is None:
                self._lose(n, f"node {n.name!r} left the run")
            elif n.registered and n.state != "exited" and now - n.last_seen > self.topo.run.heartbeat_timeout:
                self._lose(n, f"node {n.name!r} silent for {now - n.last_seen:.1f} s")

    def _lose(self, n: NodeStatus, reason: str) -> None:
        n.lost, n.lost_reason = True, reason
        log.error("%s", reason)
        if self.sm.state not in ("running", "paused", "stopping"):
            return   # during start-up, _wait turns this into a start-up failure
        if self.topo.run.on_node_loss == "abort":
            self.failure = self.failure or reason
        else:
            log.warning("on_node_loss: continue; the run goes on degraded")
            if n.role == "processing":
                for a in self.topo.upstreams(n.name):
                    self.ctl.send(a, "peer_lost", peer=n.name)

    def _update_rates(self, n: NodeStatus, counters: dict) -> None:
        now = time.monotonic()
        if n._prev is not None:
            t_prev, c_prev = n._prev
            dt = max(now - t_prev, 1e-6)
            nbytes = "sent_bytes" if n.role == "acquisition" else "recv_bytes"
            n.rates = {
                "frames_per_s": (counters.get("frames", 0) - c_prev.get("frames", 0)) / dt,
                "MB_per_s": (counters.get(nbytes, 0) - c_prev.get(nbytes, 0)) / dt / 1e6,
                "cpu_percent": 100.0 * ((counters.get("cpu_s", 0) + counters.get("reader_cpu_s", 0))
                                        - (c_prev.get("cpu_s", 0) + c_prev.get("reader_cpu_s", 0))) / dt,
            }
        n._prev = (now, dict(counters))
        n.counters.update(counters)

    def _write_stats(self) -> None:
        t = round(time.monotonic() - self.t0, 3)
        for n in self.nodes.values():
            if not n.registered:
                continue
            c = n.counters
            self.stats_writer.writerow({
                "time": t, "node": n.name, "role": n.role, "state": "lost" if n.lost else n.state,
                "frames": c.get("frames", 0), "frames_per_s": round(n.rates.get("frames_per_s", 0.0), 1),
                "MB_per_s": round(n.rates.get("MB_per_s", 0.0), 3), "ring_fill": c.get("ring_fill", ""),
                "ring_slots": c.get("ring_slots", ""), "credits": c.get("credits", ""),
                "overflow": c.get("overflow", ""), "rejected": c.get("rejected", 0),
                "cpu_percent": round(n.rates.get("cpu_percent", 0.0), 1)})
        self.stats_file.flush()

    # ---------------------------------------------------------------- ending
    def _shutdown(self) -> None:
        """Every node process ends and every ring segment is gone, whatever happened before."""
        self.shutting_down = True
        if self.ctl is not None:
            for n in self.nodes.values():
                if n.registered and not n.lost:
                    self.ctl.send(n.name, "shutdown")
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline and any(
                    n.proc is not None and n.proc.poll() is None for n in self.nodes.values()):
                try:
                    self.pump(0.05)
                except Exception:
                    break
        terminate([n.proc for n in self.nodes.values() if n.proc is not None], grace=1.0)
        if self.emulator_proc is not None:
            terminate([self.emulator_proc], grace=2.0)
        for n in self.nodes.values():
            ring = n.info.get("ring")
            if ring and os.path.exists(f"/dev/shm/{ring}"):
                log.warning("removing ring segment %s left by %s", ring, n.name)
                try:
                    os.unlink(f"/dev/shm/{ring}")
                except FileNotFoundError:
                    pass
        if self.ctl is not None:
            self.ctl.close()
        if self.gatekeeper is not None:
            self.gatekeeper.close()
        if self.ctx is not None:
            self.ctx.term()

    def _gather(self, files: dict[str, list[str]]) -> tuple[dict[str, list[str]], dict[str, dict]]:
        """Processing nodes' files: in place where this machine sees them (its own host or a
        shared file system), else fetched into the run directory from their host (ssh or
        template: `cat` run the way nodes are started there); where that cannot be done, the
        record and the master file say where each file stays."""
        out: dict[str, list[str]] = {}
        places: dict[str, dict] = {}
        for node, paths in files.items():
            host = self.nodes[node.split("~")[0]].host
            out[node] = []
            for p in paths:
                if Path(p).exists():
                    out[node].append(p)
                    places[p] = {"host": host, "where": "in place"}
                    continue
                # the same place under the run directory (a rejoined node's <node>-<k>/ included)
                rel = os.path.relpath(p, self.rundir.path)
                dest = self.rundir.path / (rel if not rel.startswith("..") else Path(p).name)
                dest.parent.mkdir(parents=True, exist_ok=True)
                why = self.launcher.fetch(host, p, dest) if self.launcher else "never launched"
                if not why:
                    log.info("%s: fetched %s from host %s", node, p, host)
                    out[node].append(str(dest))
                    places[str(dest)] = {"host": host, "where": "fetched", "from": p}
                else:
                    log.warning("%s: %s stays on host %s: %s", node, p, host, why)
                    out[node].append(p)
                    places[p] = {"host": host, "where": f"on host {host}, not fetched: {why}"}
        return out, places

    def result(self) -> tuple[str, int]:
        if self.failure:
            return "failed", EXIT_FAILED
        if self.interrupted:
            return "interrupted", EXIT_INTERRUPTED
        if any(n.lost or n.past for n in self.nodes.values()):
            return "degraded", EXIT_DEGRADED
        return "completed", EXIT_OK

    def _record(self) -> dict:
        acq_reports = {n.name: n.eor for n in self.nodes.values() if n.role == "acquisition"}
        procs = [n for n in self.nodes.values() if n.role == "processing"]
        past = {f"{n.name}~{k}": p["files"] for n in procs for k, p in enumerate(n.past, 1)}   # written off
        files, places = self._gather({**{n.name: (n.eor or {}).get("files") or n.info.get("files", [])
                                         for n in procs}, **past})
        proc_reports = {n.name: n.eor or salvage(n.name, files[n.name],
                                                 n.proc is not None and n.proc.poll() is not None)
                        for n in procs}
        proc_reports.update({name: salvage(name, files[name], True) for name in past})
        lost = {n.name for n in self.nodes.values() if n.lost}
        seen = {a: self.nodes[a].counters.get("frames", 0) for a in acq_reports}
        result, code = self.result()
        self.books, master = keep_record(self.rundir, self.topo.name, acq_reports, proc_reports, files, lost,
                                         seen, {"run": self.rundir.number, "result": result}, places)
        try:
            plots = write_plots(self.rundir.path) if self.topo.run.plots else []
        except Exception as exc:     # (a full disk): the record below matters more than pictures
            log.warning("plots not written: %s: %s", type(exc).__name__, exc)
            plots = []
        summary = {
            "name": self.topo.name, "run": self.rundir.number, "run_dir": str(self.rundir.path),
            "result": result, "exit_code": code,
            "message": self.failure or "; ".join([p["lost_reason"] + " (it rejoined)" for n in self.nodes.values()
                                                  for p in n.past] +
                                                 [n.lost_reason for n in self.nodes.values() if n.lost]),
            "stop_reason": self.stop_reason,
            "topology_file": str(self.topo.path) if self.topo.path else None,
            "started": datetime.fromtimestamp(self.started_at, timezone.utc).isoformat(),
            "ended": datetime.now(timezone.utc).isoformat(),
            "duration_s": round(time.time() - self.started_at, 3),
            "states": self.sm.history,
            "books": self.books.summary(),
            "missing_file": "missing.csv", "master_file": MASTER_FILE if master else None,
            "files": places,
            "plots": [str(p.relative_to(self.rundir.path)) for p in plots],
            "nodes": {n.name: {"role": n.role, "host": n.host, "pid": n.pid, "incarnation": n.incarnation,
                               "lost": n.lost, "lost_reason": n.lost_reason, "errors": n.errors,
                               "exit_code": n.proc.poll() if n.proc is not None else None,
                               "configured": n.info, "report": n.eor, "counters": n.counters,
                               "past_incarnations": n.past}
                      for n in self.nodes.values()},
            "pauses": {"count": len(self.pauses), "seconds": round(sum(p["seconds"] for p in self.pauses), 3),
                       "intervals": self.pauses,
                       "note": "no frames are acquired during a pause; seqs go on after it without a gap"},
            "live_s": round(self.live_seconds(), 3),
            "parameters": {
                "requested": {"topology": self.requested, "overrides": self.overrides,
                              "options": {"frames": self.options.frames, "duration": self.options.duration,
                                          "loopback": self.options.loopback},
                              "until": self.until},
                "set_up_afresh": sorted(n.name for n in self.nodes.values()
                                        if n.role == "acquisition" and n.info and not n.info.get("kept")),
                "hardware": {n.name: n.info.get("hardware", {}) for n in self.nodes.values()
                             if n.role == "acquisition"},
                "pipeline": {name: [s.stage for s in p.pipeline] for name, p in self.topo.processing.items()},
            },
            "control": {"endpoint": self.ctl.endpoint if self.ctl else None,
                        "rejected": self.ctl.rejected if self.ctl else 0,
                        "security": self.topo.security,
                        "refused": self.gatekeeper.refused if self.gatekeeper else 0},
            "versions": versions(),
        }
        self.rundir.write_json(summary)
        return summary


def _loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"
