"""Shipper: ring -> processing nodes over one ROUTER socket, against credit.

Each processing node connects a DEALER (identity = its name) and grants
credits (frames it is ready to take).  The shipper sends runs of consecutive
ring slots as one message to a peer with credit; the slots are released back to
the reader only once ZeroMQ is done with them (zero-copy sends are tracked, small
ones are copied and released at once).  `ROUTER_MANDATORY` makes a send to a
vanished peer raise instead of being dropped; the batch then stays in the ring
and goes to another peer.
"""
from __future__ import annotations

import errno
import logging
import os
import weakref
from collections import deque
from typing import Any

import numpy as np
import zmq

import time

from coordinator.dispatch import DispatchSchedule
from coordinator.ranges import RangeSet
from coordinator.wire import ProtocolError, log_rejected, pack_frames_header, pack_gap, unpack_data_header

log = logging.getLogger(__name__)

ZERO_COPY_MIN = 64 * 1024   # below this a copy is cheaper than tracking the send


class Shipper:
    def __init__(self, ring: Any, sock: zmq.Socket, run: int, stream: str, module: str,
                 peers: list[str], batch_max: int, schedule: DispatchSchedule | None = None,
                 done_fd: int | None = None) -> None:
        self.ring = ring
        self.sock = sock
        self.run = run
        self.stream = stream
        self.module = module
        self.batch_max = max(1, batch_max)
        self.credits = {p: 0 for p in peers}
        self.lost: set[str] = set()
        self.written_off: set[str] = set()    # lost by the coordinator's word (not just a dropped link)
        self.held: dict[str, int] = {}        # credit granted while written off (by a new incarnation)
        self.back_from: dict[str, int] = {}   # a rejoined peer gets scheduled blocks from this seq on
        self.shipped_lost = {p: RangeSet() for p in peers}   # shipped to an incarnation that was lost
        self.inflight: deque[list] = deque()  # [n_records, done], oldest first
        # one per node, kept from run to run (see close)
        self.done_fd = done_fd if done_fd is not None else os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.unreleased = 0                   # records sent but not yet released to the ring
        self.shipped = {p: RangeSet() for p in peers}
        self.send_failed = RangeSet()
        self.sent_frames = 0
        self.sent_bytes = 0
        self.messages = 0
        self.rejected = 0
        self._rr = 0
        self.schedule = schedule              # None: any receiver with credit (load sharing)
        self.hold = False                     # one-shot capture: nothing leaves before the ring is full
        self.stalled = {p: 0.0 for p in peers}   # s the head of the ring waited for this peer's credit
        self._stall: tuple[str, float] | None = None

    # -- incoming credits -------------------------------------------------------------
    def on_readable(self) -> None:
        while True:
            try:
                parts = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                peer = parts[0].decode("utf-8", "replace")
                if len(parts) != 2:
                    raise ProtocolError(f"credit message with {len(parts) - 1} parts")
                msg = unpack_data_header(parts[1])
                if msg["t"] != "credit":
                    raise ProtocolError(f"{msg['t']!r} message sent to an acquisition node")
                if peer not in self.credits:
                    raise ProtocolError(f"credit from {peer!r}, which is not a receiver of this node")
                if msg["run"] != self.run:
                    raise ProtocolError(f"credit for run {msg['run']}, this is run {self.run}")
                if msg["n"] < 0:
                    raise ProtocolError("negative credit")
            except ProtocolError as exc:
                self.rejected += 1
                log_rejected(log, self.rejected, "data-socket message: %s", exc)
                continue
            if peer in self.written_off:    # only the coordinator says when such a peer is back
                self.held[peer] = self.held.get(peer, 0) + msg["n"]
                continue
            if peer in self.lost:             # its connection dropped and came back: same node
                log.info("%s is back; it gets frames again", peer)
                self.lost.discard(peer)
            self.credits[peer] += msg["n"]

    def peer_lost(self, peer: str, written_off: bool = True) -> None:
        """Withdraw its credit (its connection dropped, or the coordinator wrote it off).  What a
        written-off peer was sent is booked to that incarnation: a later one starts with a clean
        slate, so its end-of-run count is its own."""
        if peer not in self.credits:
            return
        if peer not in self.lost:
            log.warning("receiver %s lost; its credit is withdrawn", peer)
            self.lost.add(peer)
            self.credits[peer] = 0
        if written_off and peer not in self.written_off:
            self.written_off.add(peer)
            self.held[peer] = 0
            self.shipped_lost[peer].update(self.shipped[peer])
            self.shipped[peer] = RangeSet()

    def peer_back(self, peer: str, from_seq: int) -> None:
        """A new incarnation of a lost receiver: it gets the credit it has granted since, and
        with a schedule its blocks from `from_seq` on (a seq no module has sent yet, so every
        module sends each later event to the same node)."""
        if peer in self.written_off:
            log.warning("receiver %s is back (new incarnation); blocks from seq %d", peer, from_seq)
            self.written_off.discard(peer)
            self.lost.discard(peer)
            self.credits[peer] = self.held.pop(peer, 0)
            self.back_from[peer] = from_seq

    # -- outgoing frames --------------------------------------------------------------
    def reap(self) -> None:
        """Release, in ring order, the slots whose sends have completed."""
        try:
            os.eventfd_read(self.done_fd)
        except BlockingIOError:
            pass
        done = 0
        while self.inflight and self.inflight[0][1]:
            done += self.inflight.popleft()[0]
        if done:
            self.unreleased -= done
            self.ring.release(done)

    def pending(self) -> int:
        """Records in the ring not yet sent."""
        return self.ring.available() - self.unreleased

    def _pick_peer(self) -> str | None:
        peers = [p for p, c in self.credits.items() if c > 0]
        if not peers:
            return None
        self._rr = (self._rr + 1) % len(peers)
        best = max(self.credits[p] for p in peers)
        ranked = [p for p in peers[self._rr:] + peers[:self._rr] if self.credits[p] == best]
        return ranked[0]

    def _next_records(self, n: int) -> np.ndarray:
        """Up to n unsent records, contiguous in memory (a batch never wraps)."""
        skip = self.unreleased
        for view in self.ring.peek(skip + n):
            if skip < len(view):
                return view[skip:skip + n]
            skip -= len(view)
        return self.ring.records[:0]

    def _next_scheduled(self, pending: int) -> tuple[str | None, np.ndarray | None]:
        """The head of the ring up to the end of its dispatch block, and the block's owner."""
        head = self._next_records(1)
        if len(head) == 0:
            return None, None
        seq = int(head["seq"][0])
        lost = self.lost | {p for p, s in self.back_from.items() if seq < s} if self.back_from else self.lost
        peer = self.schedule.owner(seq, lost)
        if peer is None:
            return None, None
        if self.credits[peer] <= 0:
            if self._stall is None or self._stall[0] != peer:
                self._stall = (peer, time.monotonic())
            return None, None
        recs = self._next_records(min(pending, self.credits[peer], self.batch_max))
        end = self.schedule.block_end(seq)
        if int(recs["seq"][-1]) >= end:
            recs = recs[:int(np.searchsorted(recs["seq"], end))]
        return peer, recs

    def stalled_so_far(self) -> dict[str, float]:
        """s the senders waited per peer, the wait going on now included: a receiver that
        hangs shows up at once, not when it finally takes frames again."""
        out = dict(self.stalled)
        if self._stall is not None:
            peer, since = self._stall
            out[peer] += time.monotonic() - since
        return out

    def _end_stall(self) -> None:
        if self._stall is not None:
            peer, since = self._stall
            self.stalled[peer] += time.monotonic() - since
            self._stall = None

    def pump(self) -> int:
        """Send as much as credits allow; returns frames sent."""
        self.reap()
        if self.hold:
            return 0
        sent = 0
        while True:
            pending = self.pending()
            if pending <= 0:
                break
            if self.schedule is not None:
                peer, recs = self._next_scheduled(pending)
                if peer is None:
                    break
                self._end_stall()
            else:
                peer = self._pick_peer()
                if peer is None:
                    break
                recs = self._next_records(min(pending, self.credits[peer], self.batch_max))
            if len(recs) == 0:
                break
            if not self._send(peer, recs):
                continue
            n = len(recs)
            self.credits[peer] -= n
            sent += n
        return sent

    def notice_gap(self, first: int, last: int, cause: str) -> None:
        """Scheduled dispatch: tell every receiver that these seqs will never come from us, so
        their event builders need not wait for them (no credit needed: it carries no frame)."""
        if self.schedule is None:
            return
        msg = pack_gap(self.run, self.stream, self.module, first, last, cause)
        for peer in self.credits:
            if peer in self.lost:
                continue
            try:
                self.sock.send_multipart([peer.encode(), msg], flags=zmq.NOBLOCK)
            except zmq.ZMQError as exc:
                log.warning("gap notice to %s not sent: %s", peer, exc.strerror)

    def _send(self, peer: str, recs: np.ndarray) -> bool:
        header = pack_frames_header(self.run, self.stream, self.module, recs)
        big = recs.nbytes >= ZERO_COPY_MIN
        entry = [len(recs), not big]
        if big:   # runs on pyzmq's garbage-collector thread once libzmq is done with the buffer
            weakref.finalize(recs, _mark_done, entry, self.done_fd)
        try:
            self.sock.send_multipart([peer.encode(), header, recs], flags=zmq.NOBLOCK, copy=not big)
        except zmq.ZMQError as exc:
            if exc.errno == errno.EHOSTUNREACH:
                self.peer_lost(peer, written_off=False)
                return False
            if exc.errno == errno.EAGAIN:
                # peer's queue is full despite credit: treat its credit as spent for now
                log.warning("send to %s would block; waiting for new credit", peer)
                self.credits[peer] = 0
                return False
            raise
        n = len(recs)
        self.shipped[peer].add_seqs(recs["seq"])
        self.inflight.append(entry)
        self.unreleased += n
        self.sent_frames += n
        self.sent_bytes += recs.nbytes
        self.messages += 1
        self.reap()
        return True

    def close(self) -> None:
        """`done_fd` deliberately stays open until the process exits: a finalizer that runs late
        on pyzmq's thread (for a message dropped when the socket closed) must never write into
        a file descriptor number that something else has reused."""

    def abandon(self) -> None:
        """End of drain time: what is still unsent is recorded as send_failed and released."""
        self.reap()
        rest = self.pending()
        if rest > 0:
            views = self.ring.peek(self.unreleased + rest)
            self.send_failed.add_seqs(np.concatenate([v["seq"] for v in views])[self.unreleased:])
            log.error("%d frames could not be sent before the drain timeout", rest)
            self.ring.release(self.ring.available())
            self.inflight.clear()
            self.unreleased = 0

    def idle(self) -> bool:
        return self.pending() <= 0 and not self.inflight

    def report(self) -> dict:
        return {
            "shipped": {p: r.to_list() for p, r in self.shipped.items()},
            "shipped_lost": {p: r.to_list() for p, r in self.shipped_lost.items() if len(r)},
            "send_failed": self.send_failed.to_list(),
            "sent_frames": self.sent_frames, "sent_bytes": self.sent_bytes,
            "messages": self.messages, "rejected": self.rejected,
            "stalled_s": {p: round(t, 3) for p, t in self.stalled_so_far().items()},
        }


def _mark_done(entry: list, fd: int) -> None:
    entry[1] = True
    try:
        os.eventfd_write(fd, 1)
    except OSError:
        pass   # the node is closing
