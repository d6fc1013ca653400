"""Reader process: source -> ring, and nothing else, so readout never waits for the network.

Started by the acquisition node with `python -m acqnode.reader CONFIG_JSON`, the
ring's doorbell eventfds and one end of a socketpair inherited (pass_fds).
Over the socketpair (a `multiprocessing.connection.Connection`) it receives
`start`/`stop`/`pause`/`resume` and sends `ready`, `gap` (seq ranges lost with a
cause) and `done` (how many frames the source produced) as msgpack maps.

A reader serves runs in a row: after `done` it waits for `arm` (the next run of an
unchanged configuration: the board stays connected and configured) or `quit`.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any

import msgpack
import numpy as np

from acqnode.ring import Ring
from acqnode.sources.base import make_source
from coordinator.topology import topology_from_dict

log = logging.getLogger("acqnode.reader")

GAP_FLUSH_INTERVAL = 0.25
COMMAND_CHECK = 0.02   # s between looks at the command pipe while acquiring


class Reader:
    def __init__(self, cfg: dict, conn: Connection) -> None:
        topo = topology_from_dict(cfg["topology"], source="configure message")
        self.node = cfg["node"]
        self.board = cfg.get("board")
        self.acq = topo.acquisition[cfg["node"]]
        self.stream = topo.streams[self.acq.stream]
        self.frames_limit: int | None = cfg.get("frames")
        self.conn = conn
        self.ring = Ring.attach(cfg["ring"], filled_fd=cfg["filled_fd"], freed_fd=cfg["freed_fd"])
        self.source: Any = None
        self.policy = self.acq.ring.policy
        self.quit = False
        self.new_run()

    def new_run(self) -> None:
        self.stop_requested = False
        self.next_command_check = 0.0
        self.produced = 0                            # seqs the source used (stored, dropped or lost)
        self.pending_gap: list | None = None         # [start, stop, cause] not yet reported
        self.last_gap_flush = time.monotonic()
        self.paused_since: float | None = None       # a pause: the source is not read
        self.paused_s = 0.0                          # pauses of this run so far
        self.started = 0.0                           # monotonic time of `start`

    def send(self, **msg) -> None:
        self.conn.send_bytes(msgpack.packb(msg))

    def receive(self, timeout: float) -> dict | None:
        """The next command, or None; the node gone (pipe closed) is `quit`."""
        try:
            if not self.conn.poll(timeout):
                return None
            return msgpack.unpackb(self.conn.recv_bytes())
        except (EOFError, OSError):
            return {"t": "quit"}

    def poll_commands(self, timeout: float = 0.0) -> None:
        """Read any command; `stop` sets the flag the loops check, `pause`/`resume` hold them."""
        while (msg := self.receive(timeout)) is not None:
            t = msg.get("t")
            if t in ("stop", "quit"):
                self.stop_requested = True
                self.quit = self.quit or t == "quit"
            elif t == "pause" and self.paused_since is None:
                self.paused_since = time.monotonic()
            elif t == "resume" and self.paused_since is not None:
                self.paused_s += time.monotonic() - self.paused_since
                self.paused_since = None
                resumed = getattr(self.source, "resumed", None)
                if resumed is not None:
                    resumed()       # a board drops what it captured while paused
            timeout = 0.0

    def paused(self) -> bool:
        """In a pause the loops only look at commands (no frames: they are not acquired)."""
        if self.paused_since is None:
            return False
        self.poll_commands(0.1)
        return self.paused_since is not None

    def should_stop(self) -> bool:
        """Checked every batch; the pipe is looked at most every COMMAND_CHECK s (a syscall
        per batch is a measurable cost at MiB frames, `time.monotonic` is not)."""
        now = time.monotonic()
        if now >= self.next_command_check:
            self.next_command_check = now + COMMAND_CHECK
            self.poll_commands(0.0)
        return self.stop_requested

    def note_gap(self, start: int, stop: int, cause: str = "ring_overrun") -> None:
        g = self.pending_gap
        if g is not None and g[1] == start and g[2] == cause:
            g[1] = stop
        else:
            self.flush_gap()
            self.pending_gap = [start, stop, cause]

    def flush_gap(self) -> None:
        if self.pending_gap is not None:
            start, stop, cause = self.pending_gap
            self.send(t="gap", start=start, stop=stop, cause=cause)
            self.pending_gap = None
        self.last_gap_flush = time.monotonic()

    def batch_size(self) -> int:
        """Frames per source call: large enough to amortise Python, small enough for latency."""
        per_frame = self.stream.dtype.itemsize
        return int(max(1, min(64, self.ring.slots // 4, (4 << 20) // per_frame)))

    def run(self) -> int:
        try:
            self.source = make_source(self.acq.source, self.stream, self.node,
                                      tuple(self.board) if self.board else None)
        except Exception as exc:   # e.g. the board is unreachable or rejects a setting
            log.error("source cannot start: %s", exc)
            self.send(t="error", message=f"source {self.acq.source.kind}: {exc}", seq=0, fatal=True)
            return 1
        while True:
            self.send(t="ready", pid=os.getpid(), hardware=getattr(self.source, "hardware", {}))
            self.one_run()
            if self.quit or not self.wait_for_arm():
                return 0

    def one_run(self) -> None:
        while not self.stop_requested:        # wait for start (or stop before start)
            msg = self.receive(1.0)
            if msg is None:
                continue
            if msg.get("t") == "start":
                self.started = time.monotonic()
                if msg.get("epoch_ns") and hasattr(self.source, "set_epoch"):
                    self.source.set_epoch(msg["epoch_ns"])
                break
            if msg.get("t") in ("stop", "quit"):
                self.stop_requested = True
                self.quit = msg["t"] == "quit"
        try:
            if not self.stop_requested:
                if getattr(self.source, "triggered", False):
                    self.acquire_triggered()
                else:
                    self.acquire()
        except Exception as exc:
            log.exception("source failed")
            self.flush_gap()
            self.send(t="error", message=f"source {self.acq.source.kind}: {type(exc).__name__}: {exc}",
                      seq=self.produced, trace=traceback.format_exc(limit=5))
        if self.paused_since is not None:          # stopped while paused
            self.paused_s += time.monotonic() - self.paused_since
            self.paused_since = None
        self.flush_gap()
        self.ring.close_writer()
        report = getattr(self.source, "report", None)
        acquired = time.monotonic() - self.started - self.paused_s if self.started else 0.0
        self.send(t="done", produced=self.produced, source=report() if report else {},
                  paused_s=round(self.paused_s, 6), acquired_s=round(acquired, 6))

    def wait_for_arm(self) -> bool:
        """Between runs: `arm` starts the next run with the same source; `quit` ends."""
        while True:
            msg = self.receive(1.0)
            if msg is None:
                continue
            if msg.get("t") == "quit":
                return False
            if msg.get("t") == "arm":
                self.frames_limit = msg.get("frames")
                self.new_run()
                new_run = getattr(self.source, "new_run", None)
                if new_run is not None:
                    new_run()
                return True

    def acquire(self) -> None:
        """Produce frames straight into reserved ring slots (no intermediate copy).

        Full ring: `block` waits for the shipper to free slots (dead time for the
        source); `drop` skips the frames that do not fit and reports them as a gap.
        """
        limit = self.frames_limit if self.frames_limit is not None else np.iinfo(np.int64).max
        batch = self.batch_size()
        paced = self.source.pace(1) > 0.0
        t0 = time.monotonic()
        seq = 0
        while seq < limit and not self.should_stop():
            if self.paused():
                continue
            n = min(batch, limit - seq)
            if paced:
                # frames exist only once their (simulated) trigger time has come; a pause
                # holds the source's clock
                wait = self.source.pace(seq) - (time.monotonic() - t0 - self.paused_s)
                if wait > 0:
                    self.poll_commands(min(wait, 0.25))
                    continue
                now = time.monotonic() - t0 - self.paused_s
                k = 1
                while k < n and self.source.pace(seq + k) <= now:
                    k += 1
                n = k
            views = self.ring.reserve(n)
            stored = 0
            for view in views:
                self.source.frames(seq + stored, len(view), out=view)
                stored += len(view)
            self.ring.commit(stored)
            if stored < n and self.policy == "drop":
                self.ring.note_dropped(n - stored)
                self.note_gap(seq + stored, seq + n)
                stored = n
            elif stored == 0:
                self.ring.wait_free(0.1)
            seq += stored
            self.produced = seq
            if self.pending_gap is not None and time.monotonic() - self.last_gap_flush > GAP_FLUSH_INTERVAL:
                self.flush_gap()

    def acquire_triggered(self) -> None:
        """A board triggers frames itself: read them into reserved slots as they come.

        Full ring: `block` stops reading the board (its triggers are dead time, as on the
        hardware); `drop` reads into a scratch record and records the frame as ring_overrun.
        """
        limit = self.frames_limit if self.frames_limit is not None else np.iinfo(np.int64).max
        limit = min(limit, getattr(self.source, "total_seqs", limit))    # a replay ends with its run
        batch = self.batch_size()
        scratch = np.zeros(1, self.stream.dtype)
        session = getattr(self.source, "session", None)    # a board's link: outages to report
        seq = 0
        try:
            while seq < limit and not self.should_stop():
                if self.paused():
                    continue
                views = self.ring.reserve(min(batch, limit - seq))
                if views:
                    out = views[0]
                elif self.policy == "drop":
                    out = scratch
                else:
                    self.ring.wait_free(0.1)
                    continue
                got = self.source.read(seq, out, COMMAND_CHECK * 5)
                if out is scratch:
                    self.ring.note_dropped(got.frames)
                    self.note_gap(seq, seq + got.frames)
                else:
                    self.ring.commit(got.frames)
                seq += got.frames
                if got.lost:
                    self.note_gap(seq, seq + got.lost, got.cause)
                    seq += got.lost
                self.produced = seq
                if self.pending_gap is not None and time.monotonic() - self.last_gap_flush > GAP_FLUSH_INTERVAL:
                    self.flush_gap()
                if session is not None and session.notices:
                    for message in session.take_notices():
                        self.send(t="error", message=message, fatal=False)
        finally:     # also when the board is given up on: its outage is in the record
            if session is not None:
                end = session.finish(limit - seq)
                if end.lost:
                    self.note_gap(seq, seq + end.lost, end.cause)
                    self.produced = seq + end.lost
                for message in session.take_notices():
                    self.send(t="error", message=message, fatal=False)

    def close(self) -> None:
        if self.source is not None:
            self.source.close()
        self.ring.close()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    cfg = json.loads(argv[0])
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s {cfg['node']}.reader %(levelname)s %(message)s")
    # The node's main process decides when we stop; a terminal Ctrl-C must not kill us mid-write.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn = Connection(cfg["conn_fd"])
    reader = Reader(cfg, conn)
    try:
        return reader.run()
    finally:
        reader.close()


if __name__ == "__main__":
    sys.exit(main())
