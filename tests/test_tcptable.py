"""The peer of a refused connection, from the kernel (coordinator/tcptable.py)."""
from __future__ import annotations

import json
import shutil
import subprocess
import time

import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from coordinator.tcptable import Closed, recently_closed, tcp_metrics, time_wait

TABLE = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:A9A5 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 545622 1 0 100 0 0 10 0
   1: 0100007F:A9A5 0600FA0A:D04C 06 00000000:00000000 03:00001747 00000000     0        0 0 3 0
   2: 0100007F:A9A6 0700FA0A:D04D 06 00000000:00000000 03:00001747 00000000     0        0 0 3 0
   3: 0100007F:A9A5 0800FA0A:D04E 01 00000000:00000000 00:00000000 00000000     0        0 0 3 0
"""


def test_time_wait_entries_of_our_endpoint_name_the_peer(tmp_path):
    table = tmp_path / "tcp"
    table.write_text(TABLE)
    got = time_wait("127.0.0.1", 0xA9A5, (table,))
    assert [(c.address, c.port) for c in got] == [("10.250.0.6", 0xD04C)]    # not other ports, not open ones
    assert got[0].age_s == pytest.approx(60 - 0x1747 / 100, abs=0.5)
    assert str(got[0]) == "10.250.0.6:53324"
    assert time_wait("10.0.0.1", 0xA9A5, (table,)) == []                     # another local address
    assert len(time_wait(None, 0xA9A5, (table,))) == 1                       # a wildcard bind
    assert time_wait(None, 1, (tmp_path / "none",)) == []                    # no table: nobody


def test_a_keyless_peer_on_loopback_is_named():
    """A real CURVE server refuses a real keyless client; right after, the kernel names it."""
    ctx = zmq.Context()
    server = ctx.socket(zmq.ROUTER)
    client = ctx.socket(zmq.DEALER)
    try:
        public, secret = zmq.curve_keypair()
        server.curve_server, server.curve_secretkey, server.curve_publickey = True, secret, public
        port = server.bind_to_random_port("tcp://127.0.0.1")
        mon = server.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
        client.setsockopt(zmq.LINGER, 0)
        client.connect(f"tcp://127.0.0.1:{port}")
        client.send(b"let me in", zmq.NOBLOCK)
        assert mon.poll(5000), "no failed handshake"
        recv_monitor_message(mon)
        named: list[Closed] = []
        for _ in range(100):                     # the kernel records the close a moment later
            named = recently_closed(f"tcp://127.0.0.1:{port}")
            if named:
                break
            time.sleep(0.01)
        assert named and named[0].address == "127.0.0.1" and named[0].age_s < 2.0, named
        mon.close(linger=0)
    finally:
        client.close(linger=0)
        server.close(linger=0)
        ctx.term()


def test_tcp_metrics_read_over_netlink_are_what_iproute2_shows():
    ours = tcp_metrics(None)
    for c in ours:
        assert c.port is None and c.age_s >= 0 and c.address
    if shutil.which("ip") is None:
        pytest.skip("iproute2 is not installed: nothing to compare with")
    res = subprocess.run(["ip", "-j", "tcp_metrics", "show"], capture_output=True, text=True, timeout=10)
    theirs = json.loads(res.stdout or "[]") if res.returncode == 0 else []
    # read after ours: an entry may have been added since, none gone (they last an hour)
    assert {c.address for c in ours} <= {m["dst"] for m in theirs} and len(ours) <= len(theirs)
    assert ours or not theirs          # an empty read would not do: the kernel has entries
    ages = {m["dst"]: m["age"] for m in theirs}
    for c in ours:       # read a moment apart
        assert abs(c.age_s - ages[c.address]) < 5.0, (c, ages)
