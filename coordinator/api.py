"""Scripted acquisitions: open a system once, run acquisitions in a row, close it.

    from coordinator.api import System

    with System("topologies/loopback.yaml") as system:          # nodes launched and registered
        for level in (0.05, 0.1, 0.2):
            summary = system.run({"acquisition.rp1.source.trigger.level": level}, frames=500)
            print(summary["run"], summary["result"], summary["books"]["saved"])

One thread (the driver) owns every socket of the system: it runs the runs and, between
them, keeps the heartbeats going and watches the nodes.  The caller's thread only queues
runs and commands (stop, pause, ...) and waits for summaries, so a script may do anything
between runs without the nodes thinking their coordinator is gone.  Leaving the `with`
block, also by an exception or Ctrl-C, stops a run in progress cleanly, records it, and
shuts every node down.
"""
from __future__ import annotations

import copy
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from coordinator.logrelay import LogRelay
from coordinator.overrides import apply_overrides
from coordinator.rundir import RunDirectory
from coordinator.session import Coordinator, RunOptions
from coordinator.topology import Topology, load_topology

OPEN_MARGIN = 30.0     # s beyond the topology's start_timeout for launching a system


class SystemError(RuntimeError):
    """The system could not be opened, or is closed."""


class Run:
    """One acquisition of a system: its number and folder once begun, commands, its summary."""

    def __init__(self, system: "System", topology: Topology, overrides: dict, until: dict | None) -> None:
        self.system = system
        self.topology = topology
        self.overrides = overrides
        self.until = until
        self.number: int | None = None
        self.directory: Path | None = None
        self.summary: dict | None = None
        self._begun = threading.Event()
        self._done = threading.Event()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> dict:
        """The run's summary (as in its run.json) once it has ended and is recorded."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"run {self.number} has not ended within {timeout} s")
        assert self.summary is not None
        return self.summary

    def stop(self) -> None:
        """End the run now, in order: sources stop, frames in flight are saved, books kept."""
        self._command("stop")

    def abort(self) -> None:
        """End the run without waiting for frames in flight (they are recorded as missing)."""
        self._command("abort")

    def pause(self) -> None:
        """Sources stop acquiring until `resume` (the record lists the pauses)."""
        self._command("pause")

    def resume(self) -> None:
        self._command("resume")

    def counters(self) -> dict[str, dict]:
        """Live per-node counters of this run (empty once it has ended)."""
        return {} if self.done else self.system.counters()

    def _command(self, event: str) -> None:
        if not self.done and self._begun.is_set():
            self.system._coordinator.events.append(event)

    def _began(self, rundir: RunDirectory) -> None:
        self.number, self.directory = rundir.number, rundir.path
        self._begun.set()

    def _finish(self, summary: dict) -> None:
        self.summary = summary
        self._begun.set()
        self._done.set()


class System:
    """A topology's nodes, launched once, serving acquisitions in a row."""

    def __init__(self, topology: Topology | str | Path, *, loopback: bool = False,
                 run_dir: str | Path | None = None, display: Any = None) -> None:
        topo = topology if isinstance(topology, Topology) else load_topology(topology)
        self._coordinator = Coordinator(topo, RunOptions(run_dir=Path(run_dir) if run_dir else None,
                                                         loopback=loopback), display)
        self.topology = self._coordinator.topo      # what every run's overrides apply to
        self._requests: queue.Queue[Run | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._opened = threading.Event()
        self._open_error: BaseException | None = None
        self._closed = False
        self.current: Run | None = None
        self.runs: list[Run] = []
        self.log_path = self.topology.run.directory / f"{self.topology.name}-system.log"
        self._work_dir: Path | None = None
        self._relay: LogRelay | None = None

    @property
    def display(self) -> Any:
        """What shows each run (`LiveDisplay`, `PlainLines` or None); set it before `open()`."""
        return self._coordinator.display

    @display.setter
    def display(self, value: Any) -> None:
        self._coordinator.display = value

    # -- life ----------------------------------------------------------------------------
    def open(self) -> "System":
        """Launch the nodes (and the board emulator); returns when every node has registered."""
        if self._thread is not None:
            return self
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._work_dir = Path(tempfile.mkdtemp(prefix="daq-system-"))
        self._relay = LogRelay(self.log_path)
        self._coordinator.on_begin = self._on_begin
        self._thread = threading.Thread(target=self._drive, name="daq-system", daemon=True)
        self._thread.start()
        limit = self.topology.run.start_timeout + OPEN_MARGIN
        if not self._opened.wait(limit) or self._open_error is not None:
            why = self._open_error or f"not up within {limit:g} s"
            self.close()
            raise SystemError(f"cannot open the system of {self.topology.path or self.topology.name}: {why}")
        return self

    def close(self, interrupted: bool = False) -> None:
        """Stop a run in progress (recorded as stopped, or interrupted), shut every node down."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            run = self.current
            if run is not None and not run.done:
                self._coordinator.events.append("interrupt" if interrupted else "stop")
                run.wait()
            self._requests.put(None)
            self._thread.join()
        if self._relay is not None:
            self._relay.close()
        if self._work_dir is not None:
            shutil.rmtree(self._work_dir, ignore_errors=True)

    def __enter__(self) -> "System":
        return self.open()

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        self.close(interrupted=kind is not None and issubclass(kind, KeyboardInterrupt))

    # -- runs ------------------------------------------------------------------------------
    def prepare(self, overrides: Mapping[str, Any] | None = None, *, frames: int | None = None,
                duration: float | None = None, source: str = "overrides",
                lines: Mapping[str, int] | None = None) -> Topology:
        """The topology a run with these changes would have (checked; raises TopologyError).
        `frames`/`duration` replace the topology's stop conditions; 0 removes one."""
        topo = apply_overrides(self.topology, dict(overrides or {}), source, lines)
        if frames is not None or duration is not None:
            topo = topo.replace_run(frames=topo.run.frames if frames is None else (frames or None),
                                    duration=topo.run.duration if duration is None else (duration or None))
        return topo

    def start(self, overrides: Mapping[str, Any] | None = None, *, frames: int | None = None,
              duration: float | None = None, until: Mapping[str, Any] | None = None) -> Run:
        """Begin a run with these topology changes (key path: value) and stop conditions
        (`until={"histogram": name, "entries": n}`); returns once it has its run number."""
        if self._thread is None or self._closed:
            raise SystemError("the system is not open")
        if self.current is not None and not self.current.done:
            raise SystemError(f"run {self.current.number} is still in progress")
        topo = self.prepare(overrides, frames=frames, duration=duration)
        run = Run(self, topo, dict(overrides or {}), dict(until) if until else None)
        self.current = run
        self.runs.append(run)
        self._requests.put(run)
        while not run._begun.wait(0.5):
            if not self._thread.is_alive():
                raise SystemError("the system's driver thread has ended")
        return run

    def run(self, overrides: Mapping[str, Any] | None = None, **stop: Any) -> dict:
        """`start` and `wait`: the summary of a whole run."""
        return self.start(overrides, **stop).wait()

    def counters(self) -> dict[str, dict]:
        """Per node: state, counters and rates, as the dashboard shows them."""
        for _ in range(5):    # the driver thread may update a dict while it is copied
            try:
                return {n.name: {"role": n.role, "state": "lost" if n.lost else n.state,
                                 "counters": copy.deepcopy(n.counters), "rates": dict(n.rates)}
                        for n in self._coordinator.nodes.values()}
            except RuntimeError:
                time.sleep(0.001)
        return {}

    # -- the driver thread ----------------------------------------------------------------
    def _on_begin(self, rundir: RunDirectory) -> None:
        if self._relay is not None:
            self._relay.switch(rundir.log_path)
        if self.current is not None:
            self.current._began(rundir)

    def _drive(self) -> None:
        c = self._coordinator
        try:
            c.open_system(self.log_path, self._work_dir)
        except BaseException as exc:
            self._open_error = exc
            self._opened.set()
            return
        self._opened.set()
        try:
            while True:
                try:
                    run = self._requests.get_nowait()
                except queue.Empty:
                    c.pump(0.1)          # heartbeats and liveness between runs
                    continue
                if run is None:
                    return
                try:
                    summary = c.run_next(run.topology, run.overrides, run.until)
                finally:
                    if self._relay is not None:
                        self._relay.switch(None)
                run._finish(summary)
        finally:
            c.close_system()
