"""Acquisition node: owns the ring, runs the reader process, ships frames.

Life of a run: `configure` (bind the data socket on this host's address,
create the ring, start the reader process), `start` (the reader starts the
source), `stop` (the reader stops; what is in the ring is drained to the
processing nodes within the drain timeout), then an `eor` report with the
node's books: frames produced, gaps with their cause, which seqs went to which
processing node, which could not be sent.
"""
from __future__ import annotations

import gc
import json
import logging
import os
import socket
import subprocess
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import zmq

from acqnode.ring import Ring
from acqnode.shipper import Shipper
from coordinator.noderuntime import TAP_RATE, NodeRuntime
from coordinator.dispatch import DispatchSchedule
from coordinator.procutil import resident_bytes, set_pdeathsig
from coordinator.ranges import RangeSet
from coordinator.units import source_axis
from coordinator.topology import topology_from_dict
from coordinator.wire import DATA_SOCKET_BUFFER

log = logging.getLogger(__name__)

READER_START_TIMEOUT = 15.0


class AcqNode(NodeRuntime):
    role = "acquisition"

    def __init__(self, name: str, coordinator: str, keys: Path | None = None) -> None:
        super().__init__(name, coordinator, keys)
        # kept from run to run while the node's settings stay the same
        self.ring: Ring | None = None
        self.reader: subprocess.Popen | None = None
        self.reader_conn: Connection | None = None
        self.data: zmq.Socket | None = None
        self.setup: dict | None = None           # what ring, socket and reader were made for
        self.done_fd: int | None = None
        self.shipper: Shipper | None = None
        self.init_run()

    def init_run(self) -> None:
        self.shipper = None
        self.produced = 0
        self.reader_done = False
        self.source_report: dict = {}
        self.gaps: dict[str, RangeSet] = {}
        self.errors: list[str] = []
        self.drain_deadline: float | None = None
        self.paused_s = 0.0
        self.acquired_s = 0.0
        self.one_shot = False
        self.said_source_done = False
        self.ring_base = (0, 0)                  # ring counters (written, overflow) at the run's start

    # -- control ---------------------------------------------------------------------
    def on_configure(self, msg: dict) -> None:
        """Set up for a run.  A node that served a run before with the same settings keeps its
        ring, data socket and reader (the board stays connected and configured) and only
        re-arms them; any other change builds them afresh."""
        if self.state in ("configuring", "configured", "running", "draining") and self.run_no == msg["run"]:
            self.fail(f"{self.name}: configure while {self.state}")
            return
        self.new_run()
        self.init_run()
        topo = topology_from_dict(msg["topology"], source="configure message")
        cfg = topo.acquisition[self.name]
        stream = topo.streams[cfg.stream]
        self.run_no = msg["run"]
        self.run_dir = Path(msg["run_dir"])
        self.drain_timeout = topo.run.drain_timeout
        self.coordinator_timeout = max(3 * topo.run.heartbeat_timeout, 5.0)
        board = (msg["params"].get("boards") or {}).get(self.name)
        setup = {"acquisition": msg["topology"]["acquisition"][self.name],
                 "stream": msg["topology"]["streams"][cfg.stream], "address": topo.host_address(cfg.host),
                 "board": board, "security": topo.security}
        reuse = setup == self.setup and self.reader is not None and self.reader.poll() is None \
            and self.reader_conn is not None
        if not reuse:
            self.close_setup()
            if not self._bind(topo, cfg):
                return
            self.ring = Ring.create(f"daqring-{os.getpid()}-{self.name}", stream.dtype, cfg.ring.slots)
            self.register(self.ring.filled_fd, self._on_filled)
        else:
            self.ring.reopen_writer()
            st = self.ring.status()
            self.ring_base = (st.written, st.overflow)
        self.setup = setup
        # ~4 MiB per message: measured at 1 MiB frames, 4 frames per message cut the CPU per GB
        # of both nodes by a third (2.0 -> 2.5 GB/s); credits still bound each batch.
        batch = cfg.batch or max(1, (4 << 20) // stream.dtype.itemsize)
        schedule = msg["params"].get("schedule", {}).get(stream.name)
        self.shipper = Shipper(self.ring, self.data, self.run_no, stream.name, self.name,
                               topo.downstreams(self.name), min(batch, cfg.ring.slots),
                               DispatchSchedule.from_dict(schedule) if schedule else None, self.done_fd)
        self.done_fd = self.shipper.done_fd
        # one-shot: the capture never waits for the network (the ring is shipped once full)
        self.one_shot = self.shipper.hold = cfg.ring.capture == "one-shot"
        self.register(self.shipper.done_fd, self.shipper.pump)
        if reuse:
            self._to_reader(t="arm", frames=msg["params"].get("frames"))
            self.reader_deadline = time.monotonic() + READER_START_TIMEOUT
        else:
            self._start_reader(msg)
        # a tap is plain (no CURVE): with security on it is served on loopback only (ssh -L to see it)
        tap = self.open_tap("127.0.0.1" if topo.security == "curve" else topo.host_address(cfg.host))
        axis = source_axis(cfg.source, stream.samples, stream.dtype.fields[next(iter(stream.channels))][0].base)
        trigger = getattr(cfg.source, "trigger", None)
        level = getattr(trigger, "level", None)
        if cfg.source.kind == "mcpha" and level is not None:
            level = level * axis.scale             # MCPHA trigger levels are ADC counts
        self.tap_meta = {"sample_ns": axis.sample_ns, "pretrigger": round(-axis.t0_ns / axis.sample_ns),
                         "volts_per_count": {ch: (axis.scale if axis.unit == "V" and np.dtype(t).kind != "f" else None)
                                             for ch, t in stream.channels.items()},
                         "trigger_level": level, "trigger_channel": getattr(trigger, "source", None)}
        self.stream_name = stream.name
        self.every(1.0 / TAP_RATE, self._tap_frame)
        self.state = "configuring"
        self.configured_info = {"endpoint": self.endpoint, "tap": tap, "ring": self.ring.name, "slots": cfg.ring.slots,
                                "reader_pid": self.reader.pid, "itemsize": stream.dtype.itemsize,
                                "kept": reuse}

    def _bind(self, topo: Any, cfg: Any) -> bool:
        self.data = self.ctx.socket(zmq.ROUTER)
        self.data.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # a processing node's socket of the next run takes over its name from the last run's
        self.data.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.data.setsockopt(zmq.LINGER, 0)
        self.data.setsockopt(zmq.SNDHWM, 1000)
        self.data.setsockopt(zmq.SNDBUF, DATA_SOCKET_BUFFER)
        self.secure_server(self.data)
        address = topo.host_address(cfg.host)
        try:
            if cfg.data_port:
                endpoint = f"tcp://{address}:{cfg.data_port}"
                self.data.bind(endpoint)
            else:
                port = self.data.bind_to_random_port(f"tcp://{address}")
                endpoint = f"tcp://{address}:{port}"
        except zmq.ZMQError as exc:
            where = f"tcp://{address}:{cfg.data_port or '*'}"
            self.fail(f"{self.name}: cannot bind data socket {where}: {exc.strerror}")
            self.data.close(linger=0)
            self.data = None
            return False
        self.endpoint = endpoint
        self.register(self.data, self._on_data)
        self.watch_server(self.data, endpoint)
        return True

    def _start_reader(self, msg: dict) -> None:
        """Start the reader; `configured` is sent when it says `ready` (never block the loop)."""
        ours, theirs = socket.socketpair()
        cfg = {"node": self.name, "topology": msg["topology"], "ring": self.ring.name,
               "filled_fd": self.ring.filled_fd, "freed_fd": self.ring.freed_fd,
               "conn_fd": theirs.fileno(), "frames": msg["params"].get("frames"),
               "board": (msg["params"].get("boards") or {}).get(self.name)}
        self.reader = subprocess.Popen(
            [sys.executable, "-m", "acqnode.reader", json.dumps(cfg)],
            pass_fds=(self.ring.filled_fd, self.ring.freed_fd, theirs.fileno()),
            preexec_fn=set_pdeathsig)
        theirs.close()
        self.reader_conn = Connection(ours.detach())
        self.reader_deadline = time.monotonic() + READER_START_TIMEOUT
        self.register(self.reader_conn.fileno(), self._on_reader)

    def on_start(self, msg: dict) -> None:
        if self.state != "configured":
            self.fail(f"{self.name}: start while {self.state}")
            return
        self._to_reader(t="start", epoch_ns=msg.get("epoch_ns"))
        self.state = "running"
        self.send("started")

    def on_stop(self, msg: dict) -> None:
        if self.eor is not None:          # already ended: the coordinator may have missed our report
            self.send("eor", report=self.eor)
            return
        if self.state in ("running", "paused", "configured") and self.drain_deadline is None:
            self._to_reader(t="stop")
            self.state = "draining"
            self.drain_deadline = time.monotonic() + self.drain_timeout

    def on_pause(self, msg: dict) -> None:
        if self.state == "running":
            self._to_reader(t="pause")
            self.state = "paused"

    def on_resume(self, msg: dict) -> None:
        if self.state == "paused":
            self._to_reader(t="resume")
            self.state = "running"

    def end_alone(self) -> float:
        self.on_stop({"reason": "coordinator lost"})
        return self.drain_timeout

    def on_peer_lost(self, msg: dict) -> None:
        if self.shipper:
            self.shipper.peer_lost(msg["peer"])

    def on_peer_back(self, msg: dict) -> None:
        if self.shipper:
            self.shipper.peer_back(msg["peer"], msg["from_seq"])
            self.shipper.pump()

    def on_schedule(self, msg: dict) -> None:
        """New epochs of the dispatch schedule (future blocks move to other processing nodes)."""
        if self.shipper is not None and self.shipper.schedule is not None:
            new = DispatchSchedule.from_dict(msg["schedule"])
            self.shipper.schedule = new
            self.shipper.pump()

    # -- data path ---------------------------------------------------------------------
    def _to_reader(self, **msg: Any) -> None:
        if self.reader_conn is None:
            return   # the reader has ended and closed its end
        try:
            self.reader_conn.send_bytes(msgpack.packb(msg))
        except OSError:
            pass  # reader already gone: its exit is noticed in tick()

    def _on_reader(self) -> None:
        while self.reader_conn is not None and self.reader_conn.poll(0):
            try:
                msg = msgpack.unpackb(self.reader_conn.recv_bytes())
            except (EOFError, OSError):
                self.unregister(self.reader_conn.fileno())
                self.reader_conn = None
                return
            t = msg.get("t")
            if t == "ready" and self.state == "configuring":
                self.state = "configured"
                self.send("configured", info={**self.configured_info, "hardware": msg.get("hardware") or {}})
            elif t == "gap":
                self.gaps.setdefault(msg["cause"], RangeSet()).add(msg["start"], msg["stop"])
                if self.shipper is not None and msg["stop"] > msg["start"]:
                    self.shipper.notice_gap(msg["start"], msg["stop"] - 1, msg["cause"])
            elif t == "done":
                self.produced = msg["produced"]
                self.paused_s = msg.get("paused_s", 0.0)
                self.acquired_s = msg.get("acquired_s", 0.0)
                self.source_report = msg.get("source") or {}
                self.reader_done = True
                self._ship_burst()
                self._source_done()
            elif t == "error":
                self.errors.append(msg["message"])
                self.fail(f"{self.name}: {msg['message']}", fatal=bool(msg.get("fatal", False)))

    def _produced_from_ring(self) -> int:
        """The seqs a reader that died without `done` had used: stored in the ring, dropped on a
        full ring, or reported lost (a gap it had not flushed yet is not known)."""
        st = self.ring.status()
        lost = sum(r.count() for cause, r in self.gaps.items() if cause != "ring_overrun")
        return (st.written - self.ring_base[0]) + (st.overflow - self.ring_base[1]) + lost

    def _ship_burst(self) -> None:
        """One-shot: the reader has ended (burst complete, stopped, or failed): ship the ring."""
        if self.reader_done and self.shipper is not None and self.shipper.hold:
            self.shipper.hold = False
            self.shipper.pump()

    def _source_done(self) -> None:
        """Tell the coordinator the source has ended (its stop condition); a one-shot capture
        has ended when its ring is shipped too, so the run goes on while the burst drains."""
        if self.reader_done and not self.said_source_done and \
                (not self.one_shot or self.shipper is None or self.shipper.idle()):
            self.said_source_done = True
            self.send("source_done", produced=self.produced)

    def _tap_frame(self) -> None:
        """The newest frame to the tap (a copy of one record, TAP_RATE times a second)."""
        if self.state in ("running", "draining") and self.ring is not None:
            rec = self.ring.latest()
            if rec is not None:
                self.tap.publish_frame(self.stream_name, self.name, rec, self.tap_meta)

    def _on_filled(self) -> None:
        self.ring.drain_doorbell()
        self.shipper.pump()

    def _on_data(self) -> None:
        self.shipper.on_readable()
        self.shipper.pump()

    def tick(self) -> None:
        if self.shipper is None:
            return
        if self.state == "configuring" and time.monotonic() > self.reader_deadline:
            self.fail(f"{self.name}: reader process did not start within {READER_START_TIMEOUT:.0f} s")
            self.state = "failed"
        if self.reader is not None and not self.reader_done and self.reader.poll() is not None \
                and self.state != "ended":
            self._on_reader()   # its last messages (`done`) may still be in the pipe
            if not self.reader_done:
                self.fail(f"{self.name}: reader process exited with status {self.reader.returncode}")
                self.reader_done = True
                self.produced = self._produced_from_ring()
                self._ship_burst()         # what it captured is still saved
        if self.one_shot and self.state == "running":
            self._source_done()
        if self.state == "draining" and self.eor is None:
            if self.reader_done and self.shipper.idle():
                self._end_of_run()
            elif time.monotonic() > self.drain_deadline:
                if not self.reader_done:
                    self.fail(f"{self.name}: reader did not stop within the drain timeout", fatal=False)
                self.shipper.abandon()
                self._end_of_run()

    def _end_of_run(self) -> None:
        self.eor = {"produced": self.produced, "source": self.source_report,
                    "gaps": {c: r.to_list() for c, r in self.gaps.items()},
                    "errors": self.errors, "paused_s": self.paused_s, "acquired_s": self.acquired_s,
                    "ring_overflow": self.ring.status().overflow - self.ring_base[1],
                    **self.shipper.report()}
        self.state = "ended"
        self.send("eor", report=self.eor)
        self.ended()

    def counters(self) -> dict[str, Any]:
        if self.shipper is None:
            return {}
        st = self.ring.status()
        cpu = 0.0
        rss = shared = 0
        if self.reader is not None and self.reader.poll() is None:
            try:
                import psutil
                t = psutil.Process(self.reader.pid).cpu_times()
                cpu = t.user + t.system
            except Exception:
                pass
            rss, shared = resident_bytes(self.reader.pid)     # shared: the ring's pages among them
        return {"frames": st.written - self.ring_base[0], "sent_frames": self.shipper.sent_frames,
                "sent_bytes": self.shipper.sent_bytes, "ring_fill": st.fill, "ring_slots": st.slots,
                "overflow": st.overflow - self.ring_base[1], "credits": sum(self.shipper.credits.values()),
                "rejected": self.shipper.rejected, "reader_cpu_s": cpu,
                "reader_rss_bytes": rss, "reader_shared_bytes": shared,
                "stalled_s": self.shipper.stalled_so_far()}

    # -- cleanup -----------------------------------------------------------------------
    def close_run(self) -> None:
        """The run's shipper goes; ring, socket and reader stay for a next run of the same
        settings, unless this run did not end (they are then built afresh)."""
        if self.shipper is not None:
            self.unregister(self.shipper.done_fd)
            self.shipper.close()
        self.shipper = None
        if self.state != "ended" or not self.reader_done:
            self.close_setup()

    def close(self) -> None:
        self.close_run()
        self.close_setup()
        self.close_tap()

    def close_setup(self) -> None:
        if self.reader is not None:
            if self.reader.poll() is None:
                self._to_reader(t="stop")
                self._to_reader(t="quit")
                try:
                    self.reader.wait(2.0)
                except subprocess.TimeoutExpired:
                    self.reader.kill()
                    self.reader.wait()
            self.reader = None
        if self.reader_conn is not None:
            self.unregister(self.reader_conn.fileno())
            self.reader_conn.close()
            self.reader_conn = None
        if self.data is not None:
            self.close_server(self.data)
            self.data = None
        if self.ring is not None:
            self.unregister(self.ring.filled_fd)
            gc.collect()   # drop numpy views into the segment before unmapping it
            try:
                self.ring.close()
            except BufferError:
                log.warning("ring views still referenced at close; unlinking anyway")
            self.ring.unlink()
            self.ring = None
        self.setup = None
