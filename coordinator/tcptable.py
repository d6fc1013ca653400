"""Who a refused connection came from, when libzmq does not say.

A peer that fails the CURVE handshake (no keys at all) never reaches ZAP, and libzmq's
monitor names only our own endpoint for it (the v2 monitor, which names the peer, is a
draft API that pyzmq does not build).  libzmq closes such a connection at once; the
kernel of this network namespace still knows the peer for a while after:

* when we closed first, the connection waits 60 s in TIME_WAIT in the TCP table
  (`/proc/net/tcp`, `/proc/net/tcp6`) with both addresses and ports;
* when the peer closed first, TCP saves its metrics for the peer's address (the table
  `ip tcp_metrics` shows, read here over generic netlink), with the time since.

Connections to our endpoint that closed in the last moments are the refused peers.
Linux only; elsewhere, or where neither is readable, the peer stays unnamed.
"""
from __future__ import annotations

import ipaddress
import os
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

TABLES = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))
TIME_WAIT_STATE = "06"
TIME_WAIT_TIMER = "03"
TIME_WAIT_S = 60.0          # Linux's TCP_TIMEWAIT_LEN


@dataclass(frozen=True)
class Closed:
    address: str
    port: int | None        # None where only the address is known (TCP metrics)
    age_s: float            # since the connection closed

    def __str__(self) -> str:
        return self.address if self.port is None else f"{self.address}:{self.port}"


def _address(hexed: str) -> tuple[str, int]:
    """`0100007F:A9A5` -> ("127.0.0.1", 43429): 32-bit words in host (little-endian) order."""
    ip_hex, port_hex = hexed.split(":")
    raw = b"".join(bytes.fromhex(ip_hex[i:i + 8])[::-1] for i in range(0, len(ip_hex), 8))
    return _plain(ipaddress.ip_address(raw)), int(port_hex, 16)


def _plain(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    mapped = getattr(ip, "ipv4_mapped", None)
    return str(mapped or ip)


def _endpoint(endpoint: str) -> tuple[str | None, int]:
    """`tcp://10.0.0.1:5555` -> ("10.0.0.1", 5555); a wildcard or a name -> None."""
    host, _, port = endpoint.removeprefix("tcp://").rpartition(":")
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:      # `*` or a host name: any local address
        return None, int(port)
    return (None if ip.is_unspecified else str(ip)), int(port)


def time_wait(host: str | None, port: int, tables: tuple[Path, ...] = TABLES) -> list[Closed]:
    """Connections to our `host`:`port` in TIME_WAIT (we closed them)."""
    tick = os.sysconf("SC_CLK_TCK")
    out = []
    for table in tables:
        try:
            lines = table.read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) < 6 or f[3] != TIME_WAIT_STATE or not f[5].startswith(TIME_WAIT_TIMER + ":"):
                continue
            try:
                local, remote = _address(f[1]), _address(f[2])
                age = TIME_WAIT_S - int(f[5].split(":")[1], 16) / tick
            except ValueError:
                continue
            if local[1] == port and (host is None or local[0] == host):
                out.append(Closed(remote[0], remote[1], age))
    return out


# ---- TCP metrics over generic netlink (linux/genetlink.h, linux/tcp_metrics.h) -------------
NETLINK_GENERIC = 16
GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY, CTRL_ATTR_FAMILY_ID, CTRL_ATTR_FAMILY_NAME = 3, 1, 2
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
TCP_METRICS_CMD_GET = 1
ATTR_ADDR_IPV4, ATTR_ADDR_IPV6, ATTR_AGE, ATTR_SADDR_IPV4, ATTR_SADDR_IPV6 = 1, 2, 3, 11, 12
_HDR = struct.Struct("=IHHII")       # nlmsghdr: length, type, flags, seq, pid
_GENL = struct.Struct("=BBH")        # genlmsghdr: cmd, version, reserved


def _attrs(data: bytes) -> dict[int, bytes]:
    out, at = {}, 0
    while at + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, at)
        if length < 4:
            break
        out[kind & 0x3FFF] = data[at + 4:at + length]
        at += (length + 3) & ~3
    return out


def _request(sock: socket.socket, kind: int, flags: int, cmd: int, attrs: bytes = b"") -> list[bytes]:
    """Send one generic-netlink request; the payloads (after the genl header) of the answer."""
    body = _GENL.pack(cmd, 1, 0) + attrs
    sock.send(_HDR.pack(_HDR.size + len(body), kind, NLM_F_REQUEST | flags, 1, 0) + body)
    out: list[bytes] = []
    for _ in range(10_000):              # bounded: a dump is a few datagrams
        data = sock.recv(1 << 16)
        at = 0
        while at + _HDR.size <= len(data):
            length, mtype, _flags, _seq, _pid = _HDR.unpack_from(data, at)
            if length < _HDR.size:
                return out
            if mtype == NLMSG_DONE:
                return out
            if mtype == NLMSG_ERROR:
                (err,) = struct.unpack_from("=i", data, at + _HDR.size)
                if err:
                    raise OSError(-err, os.strerror(-err))
                return out
            out.append(data[at + _HDR.size + _GENL.size:at + length])
            at += (length + 3) & ~3
        if not flags & NLM_F_DUMP:
            return out
    return out


def tcp_metrics(host: str | None) -> list[Closed]:
    """Peers whose connection to our `host` (any, if None) closed, with the time since: the
    kernel's TCP metrics (saved when a connection ends; not for every connection)."""
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC) as sock:
            sock.settimeout(0.5)
            name = b"tcp_metrics\0"
            attr = struct.pack("=HH", 4 + len(name), CTRL_ATTR_FAMILY_NAME) + name + b"\0" * (-len(name) % 4)
            family = _attrs(_request(sock, GENL_ID_CTRL, 0, CTRL_CMD_GETFAMILY, attr)[0])
            (family_id,) = struct.unpack("=H", family[CTRL_ATTR_FAMILY_ID][:2])
            answers = _request(sock, family_id, NLM_F_DUMP, TCP_METRICS_CMD_GET)
    except (OSError, AttributeError, IndexError, KeyError, struct.error):
        return []                        # not Linux, no such family, not allowed: nobody named
    out = []
    for payload in answers:
        a = _attrs(payload)
        peer = a.get(ATTR_ADDR_IPV4) or a.get(ATTR_ADDR_IPV6)
        source = a.get(ATTR_SADDR_IPV4) or a.get(ATTR_SADDR_IPV6)
        if peer is None or ATTR_AGE not in a or len(a[ATTR_AGE]) != 8:
            continue
        if host is not None and source is not None and _plain(ipaddress.ip_address(source)) != host:
            continue
        (age_ms,) = struct.unpack("=Q", a[ATTR_AGE])
        out.append(Closed(_plain(ipaddress.ip_address(peer)), None, age_ms / 1000.0))
    return out


def recently_closed(endpoint: str, within_s: float = 2.0) -> list[Closed]:
    """Peers whose TCP connection to our `endpoint` (tcp://ip:port) closed within the last
    `within_s` seconds, the newest first: from TIME_WAIT with their port, else from the TCP
    metrics (address only, and only for our address, not our port)."""
    try:
        host, port = _endpoint(endpoint)
    except ValueError:
        return []
    waits = [c for c in time_wait(host, port) if c.age_s <= within_s]
    known = {c.address for c in waits}
    metrics = [c for c in tcp_metrics(host) if c.age_s <= within_s and c.address not in known]
    return sorted(waits + metrics, key=lambda c: c.age_s)
