"""ZeroMQ CURVE for every control and data socket of a run (`security: curve`).

One key pair, the cluster key, made by `daq-coordinator keys generate DIR`: every
process of the run loads it from DIR (the coordinator from the topology's `keys`,
nodes from `--keys`).  Sockets that bind are CURVE servers with the cluster key;
sockets that connect are CURVE clients that expect it.  A server lets a client in
only if the client's public key is one of the `*.key` files in DIR (checked by the
ZAP handler here, in the owner's own poll loop): the cluster key, plus any key an
operator adds.  A peer without keys fails the handshake and never reaches ZAP.

Every refusal is counted and logged with the peer's address: by ZAP, which is given
it, and from the socket monitor for failed handshakes, whose peer the kernel's TCP
table tells (`coordinator/tcptable.py`: libzmq's monitor names only our endpoint there).
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import zmq
import zmq.auth
import zmq.utils.z85
from zmq.utils.monitor import recv_monitor_message

from coordinator.tcptable import recently_closed
from coordinator.wire import log_rejected, rejection_logged

log = logging.getLogger(__name__)

KEY_NAME = "cluster"
ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_DOMAIN = b"daq"


class SecurityError(RuntimeError):
    """Keys missing or unreadable."""


def generate_keys(directory: Path, force: bool = False) -> tuple[Path, Path]:
    """Make the cluster key pair in `directory`; returns (public, secret) file paths."""
    directory = Path(directory)
    public, secret = directory / f"{KEY_NAME}.key", directory / f"{KEY_NAME}.key_secret"
    if not force and (public.exists() or secret.exists()):
        raise SecurityError(f"{directory} already holds a {KEY_NAME} key pair (use --force to replace it: "
                            f"every node must then get the new one)")
    directory.mkdir(parents=True, exist_ok=True)
    made_public, made_secret = zmq.auth.create_certificates(directory, KEY_NAME)
    os.chmod(made_secret, 0o600)
    return Path(made_public), Path(made_secret)


@dataclass(frozen=True)
class Curve:
    public: bytes
    secret: bytes
    authorized: frozenset[bytes]
    directory: Path

    @classmethod
    def load(cls, directory: Path) -> "Curve":
        directory = Path(directory)
        path = directory / f"{KEY_NAME}.key_secret"
        try:
            public, secret = zmq.auth.load_certificate(path)
            # keys on file are Z85 text; ZAP hands us the 32 raw bytes
            authorized = frozenset(zmq.utils.z85.decode(k) for k in zmq.auth.load_certificates(directory))
        except (OSError, ValueError) as exc:
            raise SecurityError(f"no usable key pair {path} ({exc}); make one with "
                                f"`daq-coordinator keys generate {directory}`") from None
        if not secret:
            raise SecurityError(f"{path} holds no secret key")
        return cls(public, secret, authorized, directory)

    def server(self, sock: zmq.Socket) -> None:
        """Before bind: a CURVE server that asks ZAP about every client (and refuses if nobody answers)."""
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_server = True
        sock.zap_domain = ZAP_DOMAIN
        sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)

    def client(self, sock: zmq.Socket) -> None:
        """Before connect: a CURVE client that talks only to a server holding the cluster key."""
        sock.curve_serverkey = self.public
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret


class Gatekeeper:
    """The ZAP handler and the handshake monitors of one process's CURVE servers.

    Its sockets are polled by the owner (a node's poller, the coordinator's pump), so
    authentication runs on the owner's thread like everything else.
    """

    def __init__(self, ctx: zmq.Context, curve: Curve) -> None:
        self.curve = curve
        self.refused = 0
        self.zap = ctx.socket(zmq.REP)
        self.zap.setsockopt(zmq.LINGER, 0)
        self.zap.bind(ZAP_ENDPOINT)
        self.monitors: dict[zmq.Socket, str] = {}
        self._monitor_of: dict[zmq.Socket, zmq.Socket] = {}      # watched socket -> its monitor
        self.named: dict[str, set[str]] = {}      # endpoint -> refused peers (ip:port) already named

    def watch(self, sock: zmq.Socket, endpoint: str) -> zmq.Socket:
        """Monitor a bound CURVE server for failed handshakes; returns the monitor socket to poll."""
        mon = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
        self.monitors[mon] = endpoint
        self._monitor_of[sock] = mon
        return mon

    def unwatch(self, sock: zmq.Socket) -> zmq.Socket | None:
        """Stop monitoring `sock` (before it is closed); returns the closed monitor socket."""
        mon = self._monitor_of.pop(sock, None)
        if mon is not None:
            sock.disable_monitor()
            mon.close(linger=0)
            del self.monitors[mon]
        return mon

    def handlers(self) -> dict[zmq.Socket, Callable[[], None]]:
        out: dict[zmq.Socket, Callable[[], None]] = {self.zap: self.on_zap}
        out.update({m: (lambda m=m: self.on_monitor(m)) for m in self.monitors})
        return out

    def on_zap(self) -> None:
        while True:
            try:
                req = self.zap.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            version, rid, domain, address, _identity, mechanism = req[:6]
            key = req[6] if len(req) > 6 else b""
            if mechanism == b"CURVE" and key in self.curve.authorized:
                self.zap.send_multipart([version, rid, b"200", b"OK", b"", b""])
                continue
            why = "key not authorised" if mechanism == b"CURVE" else f"mechanism {mechanism.decode(errors='replace')}"
            self._refused(f"peer {address.decode(errors='replace')}: {why}"
                          + (f" ({zmq.utils.z85.encode(key).decode()})" if len(key) == 32 else ""))
            self.zap.send_multipart([version, rid, b"400", why.encode(), b"", b""])

    def on_monitor(self, mon: zmq.Socket) -> None:
        events = []
        while True:
            try:
                events.append(recv_monitor_message(mon, zmq.NOBLOCK))
            except zmq.Again:
                break
        endpoint = self.monitors[mon]
        for event in events:
            mismatch = event["value"] == getattr(zmq, "PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH", -1)
            peer = self._closed_peer(endpoint) if rejection_logged(self.refused + 1) else None
            self._refused(f"peer {peer or '(address not known)'} on {endpoint}: " + (
                "no CURVE keys (mechanism mismatch)" if mismatch else
                f"no CURVE handshake (no keys, or not this cluster's; libzmq code {event['value']})"))

    def _closed_peer(self, endpoint: str) -> str | None:
        """The peer of a failed handshake, from the kernel (coordinator/tcptable.py): the
        oldest connection closed just now and not named yet; the kernel may take a moment."""
        named = self.named.setdefault(endpoint, set())
        for attempt in range(3):
            closed = recently_closed(endpoint)
            fresh = [c for c in closed if str(c) not in named]
            if fresh:
                peer = fresh[-1]
                if peer.port is not None:      # an address alone may come again, a port not
                    named.intersection_update(str(c) for c in closed)
                    named.add(str(peer))
                return str(peer)
            time.sleep(0.005 * (attempt + 1))
        return None

    def _refused(self, what: str) -> None:
        self.refused += 1
        log_rejected(log, self.refused, "connection (CURVE): %s", what)

    def close(self) -> None:
        for mon in self.monitors:
            mon.close(linger=0)
        self.zap.close(linger=0)
