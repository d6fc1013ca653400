"""Processing node: receives frames (or events) against credit, builds events, runs the pipeline.

One DEALER per upstream node (identity = this node's name), so credits go to the node
they are meant for.  Upstream nodes are acquisition nodes, or for the second stage of a
chain, processing nodes whose forward/copy stages send built events here.  Every
received message is validated (version, run, stream, module, sizes, seqs) before use; a
bad one is counted and dropped; when its header was readable its seqs are booked as
`corrupt` and its credit is returned, so one bad message can neither stall the flow nor
hide frames.  Streams whose events have parts from several modules (dispatch: full) go
through an event builder; credit for a part is given back when its event has been
processed, so the builder never holds more than the credits allow.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from coordinator.noderuntime import NodeRuntime
from coordinator.ranges import RangeSet
from coordinator.topology import topology_from_dict
from coordinator.wire import (
    DATA_SOCKET_BUFFER, ProtocolError, events_from_payload, log_rejected, pack_credit, records_from_payload,
    unpack_data_header,
)
from coordinator.frames import FLAG_INCOMPLETE, frame_dtype
from procnode.builder import EventBuilder
from procnode.events import EVENT_DTYPE, EventBatch
from procnode.outbox import Outbox
from procnode.pipeline import StageFailure, build_pipeline

log = logging.getLogger(__name__)

EXPIRE_INTERVAL = 0.05     # s between checks for events that waited too long


class ProcNode(NodeRuntime):
    role = "processing"

    def __init__(self, name: str, coordinator: str, keys: Path | None = None) -> None:
        super().__init__(name, coordinator, keys)
        self.init_run()

    def init_run(self) -> None:
        """A processing node builds everything per run: its files and histograms are the run's."""
        self.upstream: dict[zmq.Socket, str] = {}
        self.pipeline: Any = None
        self.files: list[Path] = []
        self.received: dict[str, int] = {}
        self.corrupt: dict[str, RangeSet] = {}
        self.discarded: dict[str, RangeSet] = {}
        self.builders: dict[str, EventBuilder] = {}
        self.outbox: Outbox | None = None
        self.forward_sock: zmq.Socket | None = None
        self.owed: dict[zmq.Socket, int] = {}
        self.given: dict[str, int] = {}          # parts credited back, per module (builder path)
        self.recv_bytes = 0
        self.rejected = 0
        self.flow = {"t_first": None, "t_last": None, "frames_after_first": 0}   # data-flow timing
        self.expect: dict[str, int] | None = None     # None: not told (ending without a coordinator)
        self.end_deadline = 0.0

    # -- control ------------------------------------------------------------------------
    def on_configure(self, msg: dict) -> None:
        if self.state in ("configured", "running", "ending") and self.run_no == msg["run"]:
            self.fail(f"{self.name}: configure while {self.state}")
            return
        if self.new_run():
            self.init_run()
        topo = topology_from_dict(msg["topology"], source="configure message")
        self.topo = topo
        self.cfg = topo.processing[self.name]
        self.run_no = msg["run"]
        self.run_dir = Path(msg["run_dir"])
        self.drain_timeout = topo.run.drain_timeout
        self.coordinator_timeout = max(3 * topo.run.heartbeat_timeout, 5.0)
        self.streams = {s: topo.streams[s] for s in self.cfg.streams}
        endpoints = msg["params"]["endpoints"]
        info: dict[str, Any] = {}
        if self.cfg.forwards_to():
            info["forward_endpoint"] = self._bind_outbox(topo)
            if info["forward_endpoint"] is None:
                return
        self.pipeline, ctx, self.files = build_pipeline(
            topo, self.name, self.run_no, Path(msg["run_dir"]), self._outbox_for,
            lambda m: self.fail(f"{self.name}: {m}", fatal=False))
        self.axes = ctx.axes
        # what a chain's sender packs: its stream records with the waveforms as it cropped them
        self.event_dtypes = {s: frame_dtype(st.channels, ctx.samples[s]) for s, st in self.streams.items()
                             if s in ctx.samples}
        info["csv_files"] = self.pipeline.csv_files()
        for s in self.streams.values():
            if s.scheduled and not self._chained():
                ev = self.cfg.events
                self.builders[s.name] = EventBuilder(s.name, tuple(s.modules), s.dtype, ctx.axes[s.name],
                                                     s.dispatch_block, ev.timeout, ev.time_tolerance_ns)
                self.given.update({m: 0 for m in s.modules})
        for up in topo.upstreams(self.name):
            sock = self.ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.IDENTITY, self.name.encode())
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVHWM, 0)  # credits bound what can arrive
            sock.setsockopt(zmq.RCVBUF, DATA_SOCKET_BUFFER)
            self.secure_client(sock)
            sock.connect(endpoints[up])
            self.upstream[sock] = up
            self.received[up] = 0
            self.owed[sock] = 0
            self.register(sock, lambda s=sock: self._on_data(s))
        self.every(0.25, self._poll_stages)
        info["tap"] = self.open_tap("127.0.0.1" if topo.security == "curve" else topo.host_address(self.cfg.host))
        self.every(0.5, self._tap_histograms)
        if self.builders:
            self.every(EXPIRE_INTERVAL, self._expire)
        self.state = "configured"
        self.send("configured", info={"files": [str(f) for f in self.files], **info})

    def _chained(self) -> bool:
        return self.name in self.topo.chained()

    def _bind_outbox(self, topo: Any) -> str | None:
        sock = self.ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 1000)
        self.secure_server(sock)
        address = topo.host_address(self.cfg.host)
        try:
            port = sock.bind_to_random_port(f"tcp://{address}")
        except zmq.ZMQError as exc:
            self.fail(f"{self.name}: cannot bind the forward socket on {address}: {exc.strerror}")
            sock.close(linger=0)
            return None
        self.forward_sock = sock
        self.outbox = Outbox(sock, self.run_no, self.cfg.forwards_to())
        self.register(sock, self.outbox.on_readable)
        self.watch_server(sock, f"tcp://{address}:{port}")
        return f"tcp://{address}:{port}"

    def _outbox_for(self, peer: str) -> Outbox:
        assert self.outbox is not None
        return self.outbox

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

    def end_alone(self) -> float:
        """Without a coordinator nobody says how many frames to expect: take what the senders
        drain (they stop within drain_timeout of noticing the loss, a chain's later stages
        after the earlier ones), then end."""
        if self.state not in ("configured", "running"):
            return max(0.0, self.end_deadline - time.monotonic())
        depth = next(i for i, level in enumerate(self.topo.processing_levels()) if self.name in level)
        wait = (self.drain_timeout + 1.0) * (depth + 1)
        self.expect, self.state = None, "ending"
        self.end_deadline = time.monotonic() + wait
        return wait

    def on_stop(self, msg: dict) -> None:
        pass  # processing nodes keep taking frames until `end` says how many to expect

    # -- credit ------------------------------------------------------------------------
    def _grant(self, sock: zmq.Socket, n: int) -> None:
        if n <= 0:
            return
        if self.outbox is not None and self.outbox.backlog():
            self.owed[sock] += n         # back-pressure: senders wait until our receivers take more
            return
        try:
            sock.send(pack_credit(n, self.run_no), zmq.NOBLOCK)
        except zmq.Again:
            log.warning("credit to %s not sent (queue full)", self.upstream[sock])

    def _release_owed(self) -> None:
        if self.outbox is not None and self.outbox.backlog():
            return
        for sock, n in self.owed.items():
            if n:
                self.owed[sock] = 0
                self._grant(sock, n)

    def _credit_builder(self, builder: EventBuilder) -> None:
        """Give back credit for the parts the builder has let go of (processed or dropped)."""
        for sock, up in self.upstream.items():
            done = builder.consumed.get(up)
            if done is not None and done > self.given.get(up, 0):
                self._grant(sock, done - self.given[up])
                self.given[up] = done

    # -- data ---------------------------------------------------------------------------
    def _on_data(self, sock: zmq.Socket) -> None:
        up = self.upstream[sock]
        for _ in range(64):   # bounded, so control messages are not starved
            try:
                parts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            header = None
            try:
                header = unpack_data_header(parts[0].bytes)
                self._check_header(header, up)
                if header["t"] == "frames":
                    self._on_frames(sock, up, header, parts)
                elif header["t"] == "gap":
                    self._on_gap(header)
                else:
                    self._on_events(sock, up, header, parts)
            except ProtocolError as exc:
                self._reject(sock, up, header, exc, parts[1:])
        self._maybe_finish()

    def _check_header(self, header: dict, up: str) -> None:
        t = header["t"]
        if t == "credit" or (t == "events") != (up in self.topo.processing):
            raise ProtocolError(f"{t!r} message from {up!r}, not expected from it")
        if header["run"] != self.run_no:
            raise ProtocolError(f"{t} of run {header['run']}, this is run {self.run_no}")
        stream = self.streams.get(header["stream"])
        if stream is None:
            raise ProtocolError(f"{t} of stream {header['stream']!r}, not received here")
        if t != "events":
            module = header["module"]
            if module not in stream.modules:
                raise ProtocolError(f"{t} of module {module!r}, which is not a module of stream "
                                    f"{stream.name!r} ({', '.join(stream.modules)})")
            if module != up:
                raise ProtocolError(f"{t} claim module {module!r} on the socket of {up!r}")

    def _on_frames(self, sock: zmq.Socket, up: str, header: dict, parts: list) -> None:
        stream = self.streams[header["stream"]]
        records = records_from_payload(header, [p.buffer for p in parts[1:]], stream.dtype)
        n = len(records)
        self._time_flow(n)
        self.received[up] += n
        self.recv_bytes += records.nbytes
        builder = self.builders.get(stream.name)
        if builder is None:
            self._process(EventBatch.from_frames(stream.name, tuple(stream.modules), up, records,
                                                 self.axes[stream.name]))
            self._grant(sock, n)
            return
        for batch in builder.add(up, records, time.monotonic()):
            self._process(batch)
        self._credit_builder(builder)

    def _on_gap(self, header: dict) -> None:
        builder = self.builders.get(header["stream"])
        if builder is None or not 0 <= header["first"] <= header["last"]:
            raise ProtocolError("gap notice for a stream without event building, or a bad range")
        for batch in builder.gap(header["module"], header["first"], header["last"]):
            self._process(batch)
        self._credit_builder(builder)

    def _on_events(self, sock: zmq.Socket, up: str, header: dict, parts: list) -> None:
        stream = self.streams[header["stream"]]
        events, by_module, tables = events_from_payload(header, [p.buffer for p in parts[1:]],
                                                        self.event_dtypes[stream.name],
                                                        stream.modules)
        n = len(events)
        self._time_flow(n)
        self.received[up] += n
        self.recv_bytes += sum(p.nbytes for p in by_module.values())
        self._process(EventBatch(stream.name, tuple(stream.modules), events, by_module,
                                 self.axes[stream.name], dict(tables)))
        self._grant(sock, n)

    def _process(self, batch: EventBatch) -> None:
        """Run the pipeline; incomplete events follow the `events.incomplete` policy."""
        policy = self.cfg.events.incomplete
        incomplete = (batch.events["flags"] & FLAG_INCOMPLETE) != 0 if policy != "process" else None
        try:
            if incomplete is None or not incomplete.any():
                self.pipeline.run(batch)
                return
            if not incomplete.all():
                self.pipeline.run(batch.select(~incomplete))
            rest = batch.select(incomplete)
            if policy == "save":
                self.pipeline.run(rest, keeping_only=True)
            else:
                for i, m in enumerate(rest.modules):
                    here = rest.seq[(rest.events["present"] & (1 << i)) != 0]
                    if len(here):
                        self.discarded.setdefault(m, RangeSet()).add_seqs(here)
        except StageFailure as exc:
            self.fail(f"{self.name}: {exc} (on_stage_error: stop)")
            self.running = False

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

    def _reject(self, sock: zmq.Socket, up: str, header: dict | None, exc: Exception,
                payload: list | None = None) -> None:
        """Count and drop a bad message; if its header was readable, book its seqs as corrupt
        and give its credit back, so one bad message neither stalls the flow nor hides frames."""
        self.rejected += 1
        log_rejected(log, self.rejected, "data message from %s: %s", up, exc)
        t = header.get("t") if header else None
        if t not in ("frames", "events") or header.get("run") != self.run_no:
            return
        first, last, n = header["first"], header["last"], header["n"]
        if not (0 <= first <= last and 0 < n <= self.cfg.credits):
            return
        if t == "frames":
            if header.get("module") != up:
                return
            self.corrupt.setdefault(up, RangeSet()).add(first, last + 1)
        else:
            stream = self.streams.get(header["stream"])
            if stream is None or up not in self.topo.processing:
                return
            exact = _events_seqs(payload, n, first, last, stream.modules)
            for module in stream.modules:
                books = self.corrupt.setdefault(module, RangeSet())
                if exact is None:
                    books.add(first, last + 1)
                else:
                    books.add_seqs(exact[module])
        self.received[up] += n
        self._grant(sock, n)

    def _poll_stages(self) -> None:
        if self.pipeline is not None and self.eor is None:   # after the end of run the files are closed
            self.pipeline.poll()

    def _tap_histograms(self) -> None:
        """The histograms so far to the tap, twice a second."""
        if self.pipeline is None or self.eor is not None:
            return
        hists = [{"name": h.name, "field": h.field, "unit": h.unit, "edges": h.edges, "counts": h.counts,
                  "underflow": h.under, "overflow": h.over, "entries": h.entries}
                 for h in self.pipeline.stages if getattr(h, "kind", "") == "histogram"]
        if hists:
            self.tap.publish_histograms(self.name, hists)

    def _expire(self) -> None:
        now = time.monotonic()
        for builder in self.builders.values():
            for batch in builder.expire(now):
                self._process(batch)
            self._credit_builder(builder)

    def tick(self) -> None:
        if self.outbox is not None:
            self.outbox.pump()
            self._release_owed()
        if self.state == "ending":
            self._maybe_finish()

    def _maybe_finish(self) -> None:
        if self.state != "ending" or self.eor is not None:
            return
        complete = self.expect is not None and all(self.received.get(m, 0) >= n
                                                   for m, n in self.expect.items())
        late = time.monotonic() >= self.end_deadline
        if not complete and not late:
            return
        if self.expect is None:
            log.warning("ending alone: received %s", self.received)
        elif not complete:
            log.error("end of run: expected %s, received %s", self.expect, self.received)
        for builder in self.builders.values():
            for batch in builder.flush():
                self._process(batch)
        if self.outbox is not None and self.outbox.backlog():
            self.outbox.pump()
            if not late:
                return            # frames still on their way to the next processing node
            self.outbox.abandon()
        self._end_of_run()

    def _end_of_run(self) -> None:
        self.pipeline.close()
        incomplete: dict[str, RangeSet] = {}
        events: dict[str, Any] = {"complete": 0, "incomplete": 0, "late_parts": 0, "time_mismatch": []}
        for b in self.builders.values():
            for m, r in b.stats.missing.items():
                incomplete.setdefault(m, RangeSet()).update(r)
            events["complete"] += b.stats.complete
            events["incomplete"] += b.stats.incomplete
            events["late_parts"] += sum(r.count() for r in b.stats.late.values())
            events.setdefault("late", {}).update({m: r.to_list() for m, r in b.stats.late.items() if len(r)})
            events["time_mismatch"] += b.stats.mismatch.to_list()
        for m, r in self.discarded.items():
            incomplete.setdefault(m, RangeSet()).update(r)
        out = self.outbox.report() if self.outbox else {}
        self.eor = {"received": self.received, "recv_bytes": self.recv_bytes, "rejected": self.rejected,
                    "files": [str(f) for f in self.files], "csv_files": self.pipeline.csv_files(),
                    "saved": {m: r.to_list() for m, r in self.pipeline.saved().items()},
                    "vetoed": {m: r.to_list() for m, r in self.pipeline.vetoed.items()},
                    "stage_error": {m: r.to_list() for m, r in self.pipeline.stage_error.items()},
                    "incomplete_event": {m: r.to_list() for m, r in incomplete.items()},
                    "corrupt": {m: r.to_list() for m, r in self.corrupt.items()},
                    "events": events, "flow": self.flow, "pipeline": self.pipeline.report(), **out}
        self.state = "ended"
        self.send("eor", report=self.eor)
        self.ended()

    def counters(self) -> dict[str, Any]:
        saved = self.pipeline.saved() if self.pipeline is not None else {}
        out = {"frames": sum(self.received.values()), "recv_bytes": self.recv_bytes,
               "saved": sum(r.count() for r in saved.values()), "rejected": self.rejected}
        if self.builders:
            out["pending_events"] = sum(b.pending() for b in self.builders.values())
        if self.pipeline is not None:      # entries so far: a run may stop on a histogram's count
            out["histograms"] = {s.name: s.entries for s in self.pipeline.stages if getattr(s, "kind", "") == "histogram"}
        return out

    def close_run(self) -> None:
        if self.pipeline is not None and self.eor is None:   # ended early: files still open
            self.pipeline.close()
        for sock in self.upstream:
            self.unregister(sock)
            sock.close(linger=0)
        if self.forward_sock is not None:
            self.close_server(self.forward_sock)

    def close(self) -> None:
        self.close_run()
        self.close_tap()


def _events_seqs(payload: list | None, n: int, first: int, last: int,
                 modules: list[str]) -> dict[str, np.ndarray] | None:
    """Seqs per module of a rejected `events` message, from its events table if that part is
    whole and agrees with the header; None if not (the caller books first..last of every
    module: saved seqs stay saved in the books, so that only names what is really missing)."""
    try:
        ev = np.frombuffer(payload[0].buffer, EVENT_DTYPE) if payload else None
    except (ValueError, AttributeError):
        ev = None
    if ev is not None and len(ev) == n and int(ev["seq"][0]) == first and int(ev["seq"][-1]) == last:
        return {m: ev["seq"][(ev["present"] & (1 << i)) != 0] for i, m in enumerate(modules)}
    return None
