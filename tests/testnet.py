"""Test hosts on one machine: network namespaces joined by veth pairs to a bridge.

Each host is a namespace with one interface and one address in 10.250.N.0/24 (a private
range used only inside namespaces made here); the bridge lives in a namespace of its own,
so nothing is added to the machine's own network.  Needs root and iproute2.

    python tests/testnet.py up daq ctl a1 a2 p1 p2     # prints each host's namespace and address
    ip netns exec daq-a1 ping -c1 10.250.7.3           # the hosts reach each other
    python tests/testnet.py down daq                   # removes every namespace of prefix daq
    python tests/testnet.py cut daq a1 1.5             # a1's link down for 1.5 s, then up again

A host's namespace is `<prefix>-<host>`; launch nodes there with the topology's
`launch: "ip netns exec <prefix>-{host} {command}"` (see docs/operations.md).
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass, field

NETWORK = "10.250"


class TestNetError(RuntimeError):
    """Namespaces cannot be made here (not root, no iproute2, no permission)."""


def _ip(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    argv = ["ip", "netns", "exec", ns, "ip", *args] if ns else ["ip", *args]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    if check and res.returncode != 0:
        raise TestNetError(f"{' '.join(argv)}: {res.stderr.strip() or res.returncode}")
    return res


@dataclass
class TestNet:
    """Namespaces `<prefix>-<host>` on one bridge; `addresses[host]` is each host's address."""

    prefix: str
    hosts: list[str]
    subnet: int = 0
    addresses: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.subnet = self.subnet or 1 + zlib.crc32(self.prefix.encode()) % 250
        self.addresses = {h: f"{NETWORK}.{self.subnet}.{i + 1}" for i, h in enumerate(self.hosts)}

    def ns(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    def _veth(self, host: str, end: str) -> str:
        """Interface names (at most 15 characters) from the prefix and the host name."""
        return f"v{zlib.crc32(f'{self.prefix}/{host}'.encode()):08x}{end}"

    def up(self) -> "TestNet":
        if shutil.which("ip") is None:
            raise TestNetError("iproute2 (the ip command) is not installed")
        self.down()
        switch = self.ns("switch")
        try:
            _ip("netns", "add", switch)
            _ip("link", "add", "br0", "type", "bridge", ns=switch)
            _ip("link", "set", "br0", "up", ns=switch)
            for h in self.hosts:
                ns, inside, outside = self.ns(h), self._veth(h, "h"), self._veth(h, "s")
                _ip("netns", "add", ns)
                _ip("link", "add", inside, "netns", ns, "type", "veth", "peer", "name", outside, "netns", switch)
                _ip("link", "set", outside, "master", "br0", "up", ns=switch)
                _ip("addr", "add", f"{self.addresses[h]}/24", "dev", inside, ns=ns)
                _ip("link", "set", inside, "up", ns=ns)
                _ip("link", "set", "lo", "up", ns=ns)
        except (TestNetError, subprocess.TimeoutExpired):
            self.down()
            raise
        return self

    def down(self) -> None:
        """Remove every namespace of this prefix (their interfaces go with them)."""
        res = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
        for line in res.stdout.splitlines():
            name = line.split()[0] if line.split() else ""
            if name.startswith(self.prefix + "-"):
                subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)

    def set_link(self, host: str, up: bool) -> None:
        """Cut (or restore) a host's only link, as a pulled cable would."""
        _ip("link", "set", self._veth(host, "h"), "up" if up else "down", ns=self.ns(host))

    def exec_prefix(self, host: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns(host)]


def available() -> str | None:
    """None if namespaces can be made here, else why not (for a test's skip reason)."""
    probe = TestNet(f"probe{int(time.time()) % 100000}", ["x"])
    try:
        probe.up()
    except (TestNetError, OSError, subprocess.TimeoutExpired) as exc:
        return f"network namespaces cannot be made here: {exc}"
    finally:
        try:
            probe.down()
        except (OSError, subprocess.TimeoutExpired):
            pass
    return None


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "up":
        net = TestNet(argv[1], argv[2:]).up()
        for h in net.hosts:
            print(f"{h}\t{net.ns(h)}\t{net.addresses[h]}")
        return 0
    if len(argv) == 2 and argv[0] == "down":
        TestNet(argv[1], []).down()
        return 0
    if len(argv) == 4 and argv[0] == "cut":
        net = TestNet(argv[1], [argv[2]])
        net.set_link(argv[2], False)
        time.sleep(float(argv[3]))
        net.set_link(argv[2], True)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
