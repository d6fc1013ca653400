"""Fires a fuzz plan at a running system from wherever it runs (a namespace host of its own:
`ip netns exec <ns> python tests/fuzzfire.py PLAN`).

PLAN is a msgpack file {"endpoints": {name: "tcp://..."}, "sockets": n, "budget_s": s,
"plan": [[name, [frame, ...]], ...]}.  Each endpoint gets n DEALER sockets, each with an
identity that is no node's name; every message is sent NOBLOCK (on EAGAIN: wait, bounded,
for the socket to be writable).  Prints {"sent": {name: count}, "send_s": s} as one JSON
line, then keeps the sockets open until a line arrives on stdin (the test has seen every
message counted) or `hold_s` passes, so nothing still queued is dropped by the close.
"""
from __future__ import annotations

import json
import select
import sys
import time

import msgpack
import zmq


def send_all(plan: list[tuple[str, list[bytes]]], socks: dict[str, list[zmq.Socket]],
             deadline: float) -> dict[str, int]:
    """Send every message NOBLOCK; on EAGAIN wait (bounded) for the socket to be writable."""
    sent = dict.fromkeys(socks, 0)
    for i, (ep, frames) in enumerate(plan):
        s = socks[ep][i % len(socks[ep])]
        for _attempt in range(1000):
            try:
                s.send_multipart(frames, flags=zmq.NOBLOCK)
                sent[ep] += 1
                break
            except zmq.Again:
                if time.monotonic() > deadline:
                    raise AssertionError(f"fuzz send budget exceeded after {sent} messages") from None
                s.poll(20, zmq.POLLOUT)
        else:
            raise AssertionError(f"message {i} to {ep} could not be sent")
    return sent


def main(path: str, hold_s: float = 30.0) -> int:
    with open(path, "rb") as f:
        spec = msgpack.unpackb(f.read())
    ctx = zmq.Context()
    socks: dict[str, list[zmq.Socket]] = {ep: [] for ep in spec["endpoints"]}
    try:
        k = 0
        for ep, address in spec["endpoints"].items():
            for _ in range(spec["sockets"]):
                s = ctx.socket(zmq.DEALER)
                s.setsockopt(zmq.IDENTITY, f"fuzz-{k}".encode())   # not a node's name
                s.setsockopt(zmq.LINGER, 0)
                s.connect(address)
                socks[ep].append(s)
                k += 1
        t0 = time.monotonic()
        sent = send_all([(ep, frames) for ep, frames in spec["plan"]], socks, t0 + spec["budget_s"])
        print(json.dumps({"sent": sent, "send_s": time.monotonic() - t0}), flush=True)
        select.select([sys.stdin], [], [], hold_s)
    finally:
        for group in socks.values():
            for s in group:
                s.close(linger=0)
        ctx.term()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
