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

import os
import shlex
import shutil
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

NETWORK = "10.250"


class TestNetError(RuntimeError):
    """Namespaces cannot be made here (not root, no iproute2, no permission)."""

    __test__ = False       # not a test class, whatever its name


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


SSHD = "/usr/sbin/sshd"


class Sshd:
    """A real OpenSSH server on a test host, for `launch: ssh`: a host key and one client key
    of its own (made here), root login by key only, listening on the host's address.

    `private` folders are covered by an empty tmpfs that only this server's sessions see (a
    mount namespace of its own), so a node started through it writes files this machine cannot
    read, as on a separate computer.  Clients use `ssh_config` (`ssh -F`); `ssh_client`
    makes a plain `ssh` that does so, for programs that run `ssh` (the coordinator).
    """

    def __init__(self, net: TestNet, host: str, folder: Path, private: tuple[Path, ...] = (),
                 client: str = "ctl") -> None:
        self.net, self.host, self.folder, self.private, self.client = net, host, Path(folder), private, client
        self.address = net.addresses[host]
        self.proc: subprocess.Popen | None = None

    @property
    def ssh_config(self) -> Path:
        return self.folder / "ssh_config"

    def start(self, timeout: float = 10.0) -> "Sshd":
        if not os.access(SSHD, os.X_OK):
            raise TestNetError(f"{SSHD} is not installed (Debian package openssh-server)")
        d = self.folder
        d.mkdir(parents=True, exist_ok=True)
        for key in ("host", "client"):
            if not (d / key).exists():
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"daq-test-{key}",
                                "-f", str(d / key)], check=True, capture_output=True, timeout=30)
        (d / "authorized_keys").write_text((d / "client.pub").read_text())
        host_pub = (d / "host.pub").read_text().split()
        (d / "known_hosts").write_text(f"{self.address} {host_pub[0]} {host_pub[1]}\n")
        (d / "sshd_config").write_text(
            f"ListenAddress {self.address}\nPort 22\nHostKey {d / 'host'}\nPidFile none\n"
            f"AuthorizedKeysFile {d / 'authorized_keys'}\nStrictModes no\nUsePAM no\n"
            "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nLogLevel VERBOSE\n")
        self.ssh_config.write_text(
            f"Host {self.address}\n  User root\n  IdentityFile {d / 'client'}\n  IdentitiesOnly yes\n"
            f"  UserKnownHostsFile {d / 'known_hosts'}\n  StrictHostKeyChecking yes\n")
        Path("/run/sshd").mkdir(exist_ok=True)      # sshd's privilege separation folder
        mounts = "".join(f"mount -t tmpfs daq-private {shlex.quote(str(p))} && " for p in self.private)
        self.proc = subprocess.Popen(
            [*self.net.exec_prefix(self.host), "unshare", "--mount", "--propagation", "private",
             "sh", "-c", f"{mounts}exec {SSHD} -D -e -f {d / 'sshd_config'}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(d / "sshd.log", "ab"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:      # until a login from the client host works
            res = subprocess.run([*self.net.exec_prefix(self.client), "ssh", "-F", str(self.ssh_config),
                                  "-o", "BatchMode=yes",
                                  "-o", "ConnectTimeout=2", self.address, "true"], capture_output=True, timeout=timeout)
            if res.returncode == 0:
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        raise TestNetError(f"sshd on {self.host} did not accept a login: {(d / 'sshd.log').read_text()[-500:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def ssh_client(folder: Path, servers: list[Sshd]) -> Path:
    """A folder to put first on a program's PATH: its `ssh` logs in to every server with the
    servers' client configuration, as a user's ~/.ssh/config would (ssh reads that one from
    the password database's home, so it cannot be pointed elsewhere otherwise)."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "ssh_config"
    config.write_text("".join(s.ssh_config.read_text() for s in servers))
    wrapper = folder / "ssh"
    wrapper.write_text(f"#!/bin/sh\nexec {shutil.which('ssh') or '/usr/bin/ssh'} -F {config} \"$@\"\n")
    wrapper.chmod(0o755)
    return folder


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
