"""The coordinator's control socket: a ROUTER every node's DEALER connects to."""
from __future__ import annotations

import errno
import logging
from typing import Any

import zmq

from coordinator.wire import ProtocolError, log_rejected, pack_control, unpack_control

log = logging.getLogger(__name__)


class StartupError(RuntimeError):
    """The run could not be set up (port taken, node did not start, bad configuration)."""


class ControlServer:
    def __init__(self, ctx: zmq.Context, address: str, port: int, known: set[str],
                 curve: Any = None) -> None:
        self.known = known
        self.rejected = 0
        self.sock = ctx.socket(zmq.ROUTER)
        if curve is not None:
            curve.server(self.sock)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)   # a send to a gone node raises, not vanishes
        # No ROUTER_HANDOVER: a second peer claiming a connected node's identity is refused,
        # so nobody can hijack a node's control channel by naming themselves after it.
        self.sock.setsockopt(zmq.LINGER, 0)
        try:
            if port:
                self.sock.bind(f"tcp://{address}:{port}")
            else:
                port = self.sock.bind_to_random_port(f"tcp://{address}")
        except zmq.ZMQError as exc:
            self.sock.close()
            raise StartupError(f"cannot bind the control socket tcp://{address}:{port}: {exc.strerror}"
                               + (" (port already in use)" if exc.errno == errno.EADDRINUSE else "")) from None
        self.endpoint = f"tcp://{address}:{port}"

    def send(self, node: str, t: str, **fields: Any) -> bool:
        try:
            self.sock.send_multipart([node.encode(), pack_control(t, **fields)], zmq.NOBLOCK)
            return True
        except zmq.ZMQError as exc:
            if exc.errno in (errno.EHOSTUNREACH, errno.EAGAIN):
                return False
            raise

    def receive(self) -> list[tuple[str, dict]]:
        """All pending valid messages as (node, message); bad ones are counted and logged."""
        out = []
        while True:
            try:
                parts = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return out
            ident = parts[0].decode("utf-8", "replace")
            try:
                if len(parts) != 2:
                    raise ProtocolError(f"{len(parts) - 1} message parts, expected 1")
                if ident not in self.known:
                    raise ProtocolError("identity is not a node of this topology")
                out.append((ident, unpack_control(parts[1])))
            except ProtocolError as exc:
                self.rejected += 1
                log_rejected(log, self.rejected, "control message from %r: %s", ident[:40], exc)

    def close(self) -> None:
        self.sock.close(linger=0)
