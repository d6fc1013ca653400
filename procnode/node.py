"""Processing node: receives frames against credit, runs the pipeline, reports its books.

One DEALER per upstream acquisition node (identity = this node's name), so
credits go to the node they are meant for.  A received message is validated
(version, run, stream, module, sizes, seqs) before use; a bad one is counted
and dropped; when its header was readable its seqs are booked as `corrupt`
and its credit is returned, so one bad message can neither stall the flow nor
hide frames.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import zmq

from coordinator.noderuntime import NodeRuntime
from coordinator.ranges import RangeSet
from coordinator.topology import topology_from_dict
from coordinator.wire import DATA_SOCKET_BUFFER, ProtocolError, pack_credit, records_from_payload, unpack_data_header
from procnode.pipeline import Batch, build_pipeline

log = logging.getLogger(__name__)


class ProcNode(NodeRuntime):
    role = "processing"

    def __init__(self, name: str, coordinator: str) -> None:
        super().__init__(name, coordinator)
        self.upstream: dict[zmq.Socket, str] = {}
        self.stages: list[Any] = []
        self.files: list[Path] = []
        self.received: dict[str, int] = {}
        self.saved: dict[str, RangeSet] = {}
        self.vetoed: dict[str, RangeSet] = {}
        self.corrupt: dict[str, RangeSet] = {}
        self.recv_bytes = 0
        self.rejected = 0
        self.flow = {"t_first": None, "t_last": None, "frames_after_first": 0}   # data-flow timing
        self.expect: dict[str, int] | None = None
        self.end_deadline = 0.0
        self.eor: dict | None = None
        self.has_save = False

    def on_configure(self, msg: dict) -> None:
        if self.state != "idle":
            self.fail(f"{self.name}: configure while {self.state}")
            return
        topo = topology_from_dict(msg["topology"], source="configure message")
        self.topo = topo
        self.cfg = topo.processing[self.name]
        self.run_no = msg["run"]
        self.drain_timeout = topo.run.drain_timeout
        self.coordinator_timeout = max(3 * topo.run.heartbeat_timeout, 5.0)
        self.dtypes = {s: topo.streams[s].dtype for s in self.cfg.streams}
        self.stages, self.files = build_pipeline(topo, self.name, self.run_no, Path(msg["run_dir"]))
        self.has_save = any(st.stage == "save" for st in self.cfg.pipeline)
        self.stage_seconds = [0.0] * len(self.stages)
        endpoints = msg["params"]["endpoints"]
        for acq in topo.upstreams(self.name):
            sock = self.ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.IDENTITY, self.name.encode())
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVHWM, 0)  # credits bound what can arrive
            sock.setsockopt(zmq.RCVBUF, DATA_SOCKET_BUFFER)
            sock.connect(endpoints[acq])
            self.upstream[sock] = acq
            self.received[acq] = 0
            self.saved[acq] = RangeSet()
            self.vetoed[acq] = RangeSet()
            self.corrupt[acq] = RangeSet()
            self.register(sock, lambda s=sock: self._on_data(s))
        self.every(0.25, self._poll_stages)
        self.state = "configured"
        self.send("configured", info={"files": [str(f) for f in self.files]})

    def on_start(self, msg: dict) -> None:
        if self.state != "configured":
            self.fail(f"{self.name}: start while {self.state}")
            return
        for sock in self.upstream:
            self._grant(sock, self.cfg.credits)
        self.state = "running"
        self.send("started")

    def on_end(self, msg: dict) -> None:
        if self.eor is not None:
            self.send("eor", report=self.eor)
            return
        if self.state == "ending":
            return   # a repeated request must not push the deadline back
        self.expect = {k: int(v) for k, v in msg["expect"].items()}
        self.end_deadline = time.monotonic() + self.drain_timeout
        self.state = "ending"
        self._maybe_finish()

    def on_stop(self, msg: dict) -> None:
        pass  # processing nodes keep taking frames until `end` says how many to expect

    # -- data ---------------------------------------------------------------------
    def _grant(self, sock: zmq.Socket, n: int) -> None:
        try:
            sock.send(pack_credit(n, self.run_no), zmq.NOBLOCK)
        except zmq.Again:
            log.warning("credit to %s not sent (queue full)", self.upstream[sock])

    def _on_data(self, sock: zmq.Socket) -> None:
        module = self.upstream[sock]
        for _ in range(64):   # bounded, so control messages are not starved
            try:
                parts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            header = None
            try:
                header = unpack_data_header(parts[0].bytes)
                if header["t"] != "frames":
                    raise ProtocolError(f"{header['t']!r} message sent to a processing node")
                if header["run"] != self.run_no:
                    raise ProtocolError(f"frames of run {header['run']}, this is run {self.run_no}")
                if header["module"] != module:
                    raise ProtocolError(f"frames claim module {header['module']!r} on the socket of {module!r}")
                dtype = self.dtypes.get(header["stream"])
                if dtype is None:
                    raise ProtocolError(f"frames of stream {header['stream']!r}, not received here")
                records = records_from_payload(header, [p.buffer for p in parts[1:]], dtype)
            except ProtocolError as exc:
                self._reject(sock, module, header, exc)
                continue
            n = len(records)
            self._time_flow(n)
            self.received[module] += n
            self.recv_bytes += records.nbytes
            self._process(Batch(header["stream"], module, records))
            self._grant(sock, n)
        self._maybe_finish()

    def _time_flow(self, n: int) -> None:
        """When the first and last frames arrived: the run's real data-flow time (the same
        first-to-last measure a plain PUSH/PULL receiver gives), without start-up or the
        end-of-run handshake."""
        now = time.time()
        if self.flow["t_first"] is None:
            self.flow["t_first"] = now
        else:
            self.flow["frames_after_first"] += n
        self.flow["t_last"] = now

    def _reject(self, sock: zmq.Socket, module: str, header: dict | None, exc: Exception) -> None:
        """Count and drop a bad message; if its header was readable, book its seqs as corrupt
        and give its credit back, so one bad message neither stalls the flow nor hides frames."""
        self.rejected += 1
        log.warning("rejected data message from %s: %s", module, exc)
        if header and header.get("t") == "frames" and header.get("module") == module:
            first, last, n = header["first"], header["last"], header["n"]
            if 0 <= first <= last and 0 < n <= self.cfg.credits:
                self.corrupt[module].add(first, last + 1)
                self.received[module] += n
                self._grant(sock, n)

    def _process(self, batch: Batch) -> None:
        module = batch.module
        current: Batch | None = batch
        for i, stage in enumerate(self.stages):
            t0 = time.perf_counter()
            current, vetoed = stage.process(current)
            self.stage_seconds[i] += time.perf_counter() - t0
            if vetoed is not None and len(vetoed):
                self.vetoed[module].add_seqs(vetoed)
            if current is None:
                return
        if self.has_save:
            self.saved[module].add_seqs(current.records["seq"])

    def _poll_stages(self) -> None:
        for stage in self.stages:
            stage.poll()

    def tick(self) -> None:
        if self.state == "ending":
            self._maybe_finish()

    def _maybe_finish(self) -> None:
        if self.state != "ending" or self.eor is not None:
            return
        complete = all(self.received.get(m, 0) >= n for m, n in self.expect.items())
        if not complete and time.monotonic() < self.end_deadline:
            return
        if not complete:
            log.error("end of run: expected %s frames, received %s", self.expect, self.received)
        for stage in self.stages:
            stage.close()
        detail = {f"{i}:{st.stage}": stage.timings() for i, (st, stage)
                  in enumerate(zip(self.cfg.pipeline, self.stages)) if hasattr(stage, "timings")}
        self.stages = []
        self.eor = {"stage_detail": detail, "received": self.received, "recv_bytes": self.recv_bytes,
                    "rejected": self.rejected, "files": [str(f) for f in self.files],
                    "saved": {m: r.to_list() for m, r in self.saved.items()},
                    "vetoed": {m: r.to_list() for m, r in self.vetoed.items()},
                    "corrupt": {m: r.to_list() for m, r in self.corrupt.items()},
                    "flow": self.flow,
                    "stage_seconds": {f"{i}:{st.stage}": round(t, 6) for i, (st, t)
                                      in enumerate(zip(self.cfg.pipeline, self.stage_seconds))}}
        self.state = "ended"
        self.send("eor", report=self.eor)

    def counters(self) -> dict[str, Any]:
        return {"frames": sum(self.received.values()), "recv_bytes": self.recv_bytes,
                "saved": sum(r.count() for r in self.saved.values()), "rejected": self.rejected}

    def close(self) -> None:
        for stage in self.stages:
            try:
                stage.close()
            except Exception:
                log.exception("closing a stage failed")
        self.stages = []
        for sock in self.upstream:
            sock.close(linger=0)
