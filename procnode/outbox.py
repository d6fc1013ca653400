"""Outbox: events a forward/copy stage sends on to other processing nodes, against credit.

The same flow control as acquisition -> processing: the receiving node connects a
DEALER to this node's ROUTER and grants credits (events it is ready to take); a
batch waits here until its receiver has credit for it.  While anything waits, the
node withholds credit from its own senders, so back-pressure reaches the source
instead of memory growing here.  `ROUTER_MANDATORY` makes a send to a vanished peer
fail loudly.
"""
from __future__ import annotations

import errno
import logging
from collections import deque
from typing import Any

import zmq

from coordinator.ranges import RangeSet
from coordinator.wire import ProtocolError, log_rejected, pack_events, unpack_data_header

log = logging.getLogger(__name__)


class Outbox:
    def __init__(self, sock: zmq.Socket, run: int, peers: list[str]) -> None:
        self.sock = sock
        self.run = run
        self.credits = {p: 0 for p in peers}
        self.queue: dict[str, deque] = {p: deque() for p in peers}   # (n, frames, seqs by module)
        self.sent: dict[str, dict[str, RangeSet]] = {p: {} for p in peers}
        self.failed: dict[str, RangeSet] = {}
        self.sent_events = 0
        self.sent_to = {p: 0 for p in peers}        # events per receiver (what it must expect)
        self.rejected = 0

    def put(self, peer: str, batch: Any, raw: bool, reduced: bool, step: int = 256) -> None:
        """Queue a batch for `peer`: its events, with the waveforms (raw) and the stages' tables
        (reduced) if asked, in pieces of at most `step` events (never more than the peer grants
        in total, or a piece would wait for credit forever); sends at once if it can."""
        step = max(1, step)
        records = {m: batch.records(m) for m in batch.parts} if raw else {}
        itemsize = next(iter(records.values())).dtype.itemsize if records else 0
        for a in range(0, len(batch), step):
            rows = slice(a, min(a + step, len(batch)))
            events = batch.events[rows]
            parts = {m: r[rows] for m, r in records.items()}
            seqs = events["seq"]
            tables = {name: t[(t["seq"] >= seqs[0]) & (t["seq"] <= seqs[-1])]
                      for name, t in batch.tables.items()} if reduced else {}
            frames = pack_events(self.run, batch.stream, events, parts, tables, itemsize)
            owned = {m: seqs[(events["present"] & (1 << i)) != 0] for i, m in enumerate(batch.modules)}
            self.queue[peer].append((len(events), frames, owned))
        self.pump()

    def on_readable(self) -> None:
        while True:
            try:
                peer_b, raw = self.sock.recv_multipart(zmq.NOBLOCK)[:2]
            except zmq.Again:
                break
            except ValueError:
                self.rejected += 1
                continue
            peer = peer_b.decode("utf-8", "replace")
            try:
                msg = unpack_data_header(raw)
                if msg["t"] != "credit" or peer not in self.credits or msg["run"] != self.run or msg["n"] < 0:
                    raise ProtocolError(f"unexpected {msg['t']!r} from {peer!r}")
            except ProtocolError as exc:
                self.rejected += 1
                log_rejected(log, self.rejected, "message on the forward socket: %s", exc)
                continue
            self.credits[peer] += msg["n"]
        self.pump()

    def pump(self) -> None:
        for peer, q in self.queue.items():
            while q and self.credits[peer] >= q[0][0]:
                n, frames, owned = q[0]
                try:
                    self.sock.send_multipart([peer.encode(), *frames], flags=zmq.NOBLOCK)
                except zmq.ZMQError as exc:
                    if exc.errno in (errno.EHOSTUNREACH, errno.EAGAIN):
                        break     # not connected yet, or its queue is full: retry on the next pump
                    raise
                q.popleft()
                self.credits[peer] -= n
                self.sent_events += n
                self.sent_to[peer] += n
                for m, seqs in owned.items():
                    self.sent[peer].setdefault(m, RangeSet()).add_seqs(seqs)

    def backlog(self) -> int:
        return sum(n for q in self.queue.values() for n, _, _ in q)

    def abandon(self) -> None:
        """End of drain time: what could not be sent is booked as send_failed."""
        for q in self.queue.values():
            while q:
                _, _, owned = q.popleft()
                for m, seqs in owned.items():
                    self.failed.setdefault(m, RangeSet()).add_seqs(seqs)

    def report(self) -> dict:
        return {"forwarded": {p: {m: r.to_list() for m, r in by.items()} for p, by in self.sent.items()},
                "forward_counts": dict(self.sent_to),
                "forward_events": self.sent_events,
                "forward_failed": {m: r.to_list() for m, r in self.failed.items()},
                "forward_rejected": self.rejected}
