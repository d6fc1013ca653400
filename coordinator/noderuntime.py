"""The control side every node runs: a DEALER to the coordinator, heartbeats, one poll loop.

A node is single-threaded: one `zmq.Poller` watches the control socket, the
node's data sockets and any file descriptors (ring doorbells, the reader
process's pipe), so a node never spins and never handles a command on a
foreign thread.  Subclasses implement `on_<type>` for control messages.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

from coordinator import __version__
from coordinator.procutil import PARENT_DEATH_ENV, PARENT_DIED, resident_bytes, set_pdeathsig
from coordinator.security import Curve, Gatekeeper, SecurityError
from coordinator.wire import ProtocolError, log_rejected, pack_control, unpack_control

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL = 0.5   # seconds between heartbeats/stats, both ways
PRE_CONFIGURE_TIMEOUT = 10.0
TAP_RATE = 10.0            # frames (and histogram sets) per second at most on a node's tap


def inject_fault(point: str, node: str) -> None:
    """Test hook: `DAQ_FAULT=<point>:<node>[,...]` makes that node exit with status 3 at `point`.

    Points: `start` (before registering), `configure` (on the configure command).
    Used by the fault tests to get a real process that dies at a real moment.
    """
    for item in os.environ.get("DAQ_FAULT", "").split(","):
        if item == f"{point}:{node}":
            print(f"{node}: injected fault at {point}", file=sys.stderr, flush=True)
            os._exit(3)


def tune_malloc() -> None:
    """Keep freed message buffers instead of handing them back to the kernel (glibc only).

    libzmq allocates every received message (MiB-sized batches) and frees it after use; by
    default glibc trims the heap or unmaps the block each time, so the next message
    page-faults and the kernel zeroes fresh pages.  Measured at 1 MiB frames: 2.3 -> 3.0 GB/s,
    processing-node CPU per GB -25 %.  The cost is that a node keeps its peak buffer memory.
    """
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
        libc.mallopt(m_trim_threshold, 512 << 20)
        libc.mallopt(m_top_pad, 64 << 20)
        libc.mallopt(m_mmap_threshold, 64 << 20)
    except (OSError, AttributeError):
        pass   # not glibc: default allocator behaviour


def setup_node_logging(name: str, level: int = logging.INFO) -> None:
    """Nodes log to stderr, which the launcher appends to the run's log.txt; a native crash
    (SIGSEGV, SIGABRT) dumps the Python stacks there too."""
    import faulthandler
    faulthandler.enable()
    logging.basicConfig(
        level=level, stream=sys.stderr,
        format=f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s")


class NodeRuntime:
    """Base of acquisition and processing nodes."""

    role = "node"

    def __init__(self, name: str, coordinator: str, keys: Path | None = None) -> None:
        self.name = name
        self.coordinator = coordinator
        self.incarnation = uuid.uuid4().hex[:12]
        self.ctx = zmq.Context()
        self.curve = Curve.load(keys) if keys is not None else None
        self.gatekeeper: Gatekeeper | None = None
        self.control = self.ctx.socket(zmq.DEALER)
        self.secure_client(self.control)
        self.control.setsockopt(zmq.IDENTITY, name.encode())
        self.control.setsockopt(zmq.LINGER, 2000)
        self.control.connect(coordinator)
        self.poller = zmq.Poller()
        self.poller.register(self.control, zmq.POLLIN)
        self._handlers: dict[Any, Callable[[], None]] = {}
        self._timers: list[list] = []  # [next_due, interval, fn, run_scoped]
        self.running = True
        self.state = "idle"
        self.rejected_control = 0
        self.last_heard = time.monotonic()
        self.coordinator_timeout = PRE_CONFIGURE_TIMEOUT
        self.parent_died = False       # PARENT_DIED came: the coordinator that launched us is gone
        self.orphaned = False          # the coordinator is gone: this node ends its run by itself
        self.orphan_deadline = 0.0
        self._report_written = False
        self.run_dir: Path | None = None
        self.run_no = 0
        self.eor: dict | None = None
        self.tap: Any = None
        self.every(HEARTBEAT_INTERVAL, self._send_stats, run_scoped=False)

    # -- plumbing for subclasses ----------------------------------------------------
    def register(self, sock_or_fd: Any, callback: Callable[[], None]) -> None:
        self.poller.register(sock_or_fd, zmq.POLLIN)
        self._handlers[sock_or_fd] = callback

    def unregister(self, sock_or_fd: Any) -> None:
        if sock_or_fd in self._handlers:
            self.poller.unregister(sock_or_fd)
            del self._handlers[sock_or_fd]

    def secure_client(self, sock: zmq.Socket) -> None:
        """Before connect: with CURVE, the socket talks only to holders of the cluster key."""
        if self.curve is not None:
            self.curve.client(sock)

    def secure_server(self, sock: zmq.Socket) -> None:
        """Before bind: with CURVE, only clients with an authorised key get in."""
        if self.curve is not None:
            if self.gatekeeper is None:
                self.gatekeeper = Gatekeeper(self.ctx, self.curve)
                self.register(self.gatekeeper.zap, self.gatekeeper.on_zap)
            self.curve.server(sock)

    def watch_server(self, sock: zmq.Socket, endpoint: str) -> None:
        """After bind: count and log failed handshakes on it."""
        if self.gatekeeper is not None:
            mon = self.gatekeeper.watch(sock, endpoint)
            self.register(mon, lambda: self.gatekeeper.on_monitor(mon))

    def close_server(self, sock: zmq.Socket) -> None:
        """Close a bound data socket and its handshake monitor (a node serves runs in a row)."""
        self.unregister(sock)
        if self.gatekeeper is not None:
            mon = self.gatekeeper.unwatch(sock)
            if mon is not None:
                self.unregister(mon)
        sock.close(linger=0)

    def open_tap(self, address: str) -> str:
        """The node's observation tap (coordinator/tap.py), bound once; its endpoint."""
        if self.tap is None:
            from coordinator.tap import TapPublisher
            self.tap = TapPublisher(self.ctx, address, max_rate=TAP_RATE)
        return self.tap.endpoint

    def close_tap(self) -> None:
        """Part of every node's `close`: an open socket would block the context's term."""
        if self.tap is not None:
            self.tap.close()
            self.tap = None

    def every(self, interval: float, fn: Callable[[], None], run_scoped: bool = True) -> None:
        """A timer; a run's timers end with the run (`new_run`)."""
        self._timers.append([time.monotonic() + interval, interval, fn, run_scoped])

    def new_run(self) -> bool:
        """Before configuring a run: a node that served a run before drops that run's state
        and timers (its subclass closes what belongs to the run in `close_run`).  Returns
        whether there was an earlier run."""
        if self.state == "idle" and self.eor is None and self.run_dir is None:
            return False
        if self.state not in ("ended", "idle"):
            log.warning("configure for a new run while %s: the earlier run is abandoned", self.state)
        self.close_run()
        self._timers = [t for t in self._timers if not t[3]]
        self.eor, self._report_written, self.run_dir = None, False, None
        self.state = "idle"
        return True

    def close_run(self) -> None:
        """Release what belongs to one run (files, its sockets); `close` releases the rest."""

    def send(self, t: str, **fields: Any) -> None:
        try:
            self.control.send(pack_control(t, run=self.run_no, **fields), zmq.NOBLOCK)
        except zmq.Again:
            log.warning("control queue to the coordinator is full; %s message dropped", t)

    def fail(self, message: str, fatal: bool = True) -> None:
        """Report an error to the coordinator (which decides what the run does)."""
        log.error("%s", message)
        self.send("error", message=message, fatal=fatal)

    # -- hooks -------------------------------------------------------------------
    def counters(self) -> dict[str, Any]:
        """Cumulative counters sent with each heartbeat."""
        return {}

    def tick(self) -> None:
        """Called after every poll round."""

    def close(self) -> None:
        """Release node resources (rings, files, child processes)."""

    def end_alone(self) -> float:
        """Begin ending the run without a coordinator (stop the source, drain, flush); returns
        the seconds that may take.  A node that was never configured has nothing to end."""
        return 0.0

    def on_coordinator_lost(self, why: str) -> None:
        """End the run by ourselves and leave `<run_dir>/<node>.report.json` for
        `daq-coordinator recover`; the node exits when its report is written (or at the limit)."""
        self.orphaned = True
        if self.run_dir is None:
            log.error("%s; not configured, stopping", why)
            self.running = False
            return
        log.error("%s; ending run %d by myself", why, self.run_no)
        self.orphan_deadline = time.monotonic() + self.end_alone() + 2.0
        if self.eor is not None:       # the run had ended already: only the report is left to keep
            self.ended()

    def ended(self) -> None:
        """Called when the end-of-run report is made: an orphaned node writes it down and exits."""
        if not self.orphaned or self.run_dir is None or self._report_written:
            return
        self._report_written = True
        report = {"node": self.name, "role": self.role, "incarnation": self.incarnation,
                  "run": self.run_no, "host": socket.gethostname(), "pid": os.getpid(),
                  "ended": "alone: the coordinator was lost", "complete": self.eor is not None,
                  "report": self.eor, "counters": self.counters()}
        path = self.run_dir / f"{self.name}.report.json"
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(report, default=str))
            os.replace(tmp, path)
            log.warning("end-of-run report written to %s", path)
        except OSError as exc:
            log.error("cannot write the end-of-run report %s: %s", path, exc)
        self.running = False

    # -- main loop -----------------------------------------------------------------
    def serve(self) -> int:
        """Run until shutdown, a signal, or the coordinator going silent; always clean up."""
        stop = self._request_stop
        old = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
        old[PARENT_DIED] = signal.signal(PARENT_DIED, self._parent_died)
        if os.environ.get(PARENT_DEATH_ENV):
            set_pdeathsig(PARENT_DIED)
            if os.getppid() == 1:      # the parent was gone before we asked
                self.parent_died = True
        try:
            inject_fault("start", self.name)
            self.send("hello", role=self.role, pid=os.getpid(), host=socket.gethostname(),
                      version=__version__, incarnation=self.incarnation)
            while self.running:
                now = time.monotonic()
                due = min(t[0] for t in self._timers)
                timeout_ms = max(0, min(100, int((due - now) * 1000) + 1))
                for sock, _ in self.poller.poll(timeout_ms):
                    if sock is self.control:
                        self._on_control()
                    else:
                        self._guarded(self._handlers[sock])
                self._guarded(self.tick)
                now = time.monotonic()
                for t in self._timers:
                    if now >= t[0]:
                        t[0] = now + t[1]
                        self._guarded(t[2])
                if not self.orphaned:
                    if self.parent_died:
                        self.on_coordinator_lost("the coordinator process died")
                    elif now - self.last_heard > self.coordinator_timeout:
                        self.on_coordinator_lost(f"coordinator silent for {now - self.last_heard:.1f} s")
                elif now > self.orphan_deadline:
                    log.error("the run did not end within its limit; stopping")
                    self.ended()
                    self.running = False
            return 0
        finally:
            # Our handler stays in place until cleanup is done: a second SIGTERM (they come in
            # pairs when a parent dies) must not kill the node before it unlinks its ring.
            try:
                self.close()
            finally:
                self.send("bye")
                self.control.close(linger=500)
                if self.gatekeeper is not None:
                    self.gatekeeper.close()
                self.ctx.term()
                for s, h in old.items():
                    signal.signal(s, h)

    def _guarded(self, fn: Callable[[], None]) -> None:
        """A bug on the data path or in a timer must reach the coordinator as a fatal error, not
        kill the node silently: the coordinator then ends the run by policy and keeps the books."""
        try:
            fn()
        except Exception as exc:
            log.exception("data handler failed")
            self.fail(f"{self.name}: {type(exc).__name__}: {exc}")
            self.running = False

    def _request_stop(self, signum: int, frame: Any) -> None:
        if self.running:
            log.warning("signal %d: shutting down", signum)
        self.running = False

    def _parent_died(self, signum: int, frame: Any) -> None:
        self.parent_died = True

    def _on_control(self) -> None:
        while True:
            try:
                raw = self.control.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                msg = unpack_control(raw)
            except ProtocolError as exc:
                self.rejected_control += 1
                log_rejected(log, self.rejected_control, "control message: %s", exc)
                continue
            self.last_heard = time.monotonic()
            if msg["t"] == "configure":
                inject_fault("configure", self.name)
            handler = getattr(self, f"on_{msg['t']}", None)
            if handler is None:
                self.rejected_control += 1
                log_rejected(log, self.rejected_control, "control message %r is not for a %s node",
                             msg["t"], self.role)
                continue
            try:
                handler(msg)
            except Exception as exc:  # a bug or bad config must reach the coordinator, not kill silently
                log.exception("handling %s failed", msg["t"])
                self.fail(f"{self.name}: {msg['t']} failed: {type(exc).__name__}: {exc}")

    def on_heartbeat(self, msg: dict) -> None:
        pass

    def on_shutdown(self, msg: dict) -> None:
        self.running = False

    def _send_stats(self) -> None:
        t = os.times()
        rss = resident_bytes()[0]
        if not rss:      # no /proc: the peak RSS (KiB on Linux, bytes on macOS) is the cheap stand-in
            import resource
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            rss = peak if sys.platform == "darwin" else peak * 1024
        counters = {"cpu_s": t.user + t.system, "rss_bytes": rss, "rejected_control": self.rejected_control,
                    "refused": self.gatekeeper.refused if self.gatekeeper else 0, **self.counters()}
        self.send("stats", state=self.state, counters=counters)


def run_node(factory: Callable[[], NodeRuntime]) -> int:
    """Entry point body shared by `daq-acqnode` and `daq-procnode`."""
    try:
        node = factory()
    except SecurityError as exc:
        log.error("%s", exc)
        return 2
    return node.serve()


def node_command(load_class: Callable[[], type], doc: str) -> Any:
    """The click command of a node entry point (`daq-acqnode`, `daq-procnode`)."""
    import click

    @click.command(help=doc)
    @click.option("--coordinator", required=True, help="Control endpoint, e.g. tcp://127.0.0.1:5550")
    @click.option("--name", required=True, help="This node's name in the topology")
    @click.option("--keys", type=click.Path(file_okay=False, path_type=Path),
                  help="Key folder of a run with security: curve (daq-coordinator keys generate)")
    def main(coordinator: str, name: str, keys: Path | None) -> None:
        setup_node_logging(name)
        tune_malloc()
        cls = load_class()
        sys.exit(run_node(lambda: cls(name, coordinator, keys)))

    return main
