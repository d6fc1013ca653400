"""Fuzzing: 10**4 random and mutated messages fired from a host of their own (namespace hosts,
tests/testnet.py; the sender is tests/fuzzfire.py) at the control and data sockets of a
running system; no crash, every one counted as rejected, the run's data intact.

Which counter sees what (read from the code, so the counts below are exact):

* Coordinator control ROUTER (`ControlServer.receive`): every ZeroMQ message that arrives is
  one `recv_multipart`, and every one whose identity is not a node of the topology, or that
  does not have exactly one body part, adds 1 to `rejected` (`run.json` `control.rejected`),
  whatever its content.  The identity check comes before the body is parsed, so from a
  stranger the content never matters there.
* Acquisition node data ROUTER (`Shipper.on_readable`): again one `recv_multipart` per
  message; it is parsed (parts, msgpack, version, type, field types: `unpack_data_header`)
  and then refused because its sender is not a receiver of this node, so every message
  from a stranger adds exactly 1 to `rejected` (`eor` and `stats`), and the parser really
  runs on every mutated header.
* A multipart message is one message to both (it counts once), an empty frame is a
  message too, and a ROUTER drops nothing it has accepted from a connected peer (its
  inbound queue applies back-pressure instead: the sender's NOBLOCK send gets EAGAIN and
  retries).  A ROUTER refuses only a second connection with the identity of a connected
  peer (no ROUTER_HANDOVER); every fuzz socket has its own identity that is no node's
  name, so none is refused.

Hence the test asserts equality: control rejected == messages sent to the control port,
synth1 rejected == messages sent to the data port (5000 each), both with a zero baseline
(a normal run rejects nothing, which the procnodes' and nodes' own counters confirm).

The second test feeds the same corpus in-process through the same code paths, but as a
*known* peer ("synth1" on control, "proc1" on data), so that the checks after the identity
check (schema, run, n >= 0) see every mutated message too, and compares the result with an
independent oracle.
"""
from __future__ import annotations

import csv
import json
import os
import select
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq

from acqnode.shipper import Shipper
from acqnode.sources.base import make_source
from coordinator import PROTOCOL_VERSION
from coordinator.control import ControlServer
from coordinator.frames import frame_dtype
from coordinator.topology import load_topology
from coordinator.wire import (CONTROL_SCHEMA, DATA_SCHEMA, EVENT_FIELDS, ProtocolError, pack_control,
                              pack_credit, pack_events, pack_frames_header, pack_gap, unpack_control,
                              unpack_data_header)
from conftest import (books_by_seq, free_port, on_hosts, run_disturbed, small_topology, wait_for_frames,
                      write_topology)
from test_e2e import assert_books_by_seq, saved_frames

pytestmark = pytest.mark.usefixtures("clean_system")

FUZZFIRE = Path(__file__).with_name("fuzzfire.py")
SEED = 20240917
TOTAL = 10_000
PER_ENDPOINT = TOTAL // 2     # a multiple of 1000: the coordinator logs its 1000th, 2000th, ... rejection
SOCKETS_PER_ENDPOINT = 4
RUN = 1                       # the first run in a fresh runs/ folder is run 1 (t-00001)
DURATION = 8                  # s of running: the fuzz (typically ~1-2 s with its sync) must end well before the stop
SEND_BUDGET_S = 3.0           # the whole send loop, retries included (typically 0.2 s)
SYNC_BUDGET_S = 4.0           # waiting for both receivers to have counted everything (typically 1 s)
DT = frame_dtype({"IN1": "int16", "IN2": "int16"}, 512)   # the stream of small_topology


# --------------------------------------------------------------------------- the corpus
def _records(first: int, n: int) -> np.ndarray:
    r = np.zeros(n, DT)
    r["seq"] = np.arange(first, first + n)
    r["timestamp"] = 1000 * (r["seq"] + 1)
    r["IN1"] = np.arange(512, dtype=np.int16)
    return r


def valid_control() -> list[list[bytes]]:
    """One real message of every control type, built with the project's packer."""
    return [
        [pack_control("hello", role="acquisition", pid=4242, host="fuzzhost", version="0.1.0",
                      incarnation="0123456789ab")],
        [pack_control("configured", info={"endpoint": "tcp://127.0.0.1:1", "ring": "daqring-1-synth1",
                                          "slots": 64, "reader_pid": 1, "itemsize": DT.itemsize})],
        [pack_control("started")],
        [pack_control("stats", state="running", counters={"frames": 10, "sent_frames": 9, "rejected": 0,
                                                          "cpu_s": 0.5, "stalled_s": {"proc1": 0.0}})],
        [pack_control("source_done", produced=100)],
        [pack_control("eor", report={"produced": 100, "gaps": {}, "errors": [], "shipped": {"proc1": [[0, 100]]},
                                     "send_failed": [], "sent_frames": 100, "rejected": 0})],
        [pack_control("error", message="synth1: injected by the fuzzer", fatal=True)],
        [pack_control("bye")],
        [pack_control("heartbeat")],
        [pack_control("configure", run=RUN, topology={"topology": 1, "name": "t"}, run_dir="/tmp/nowhere",
                      params={"frames": 10})],
        [pack_control("start", epoch_ns=1_700_000_000_000_000_000)],
        [pack_control("stop", reason="duration")],
        [pack_control("end", expect={"synth1": 5})],
        [pack_control("peer_lost", peer="proc1")],
        [pack_control("schedule", stream="pulses", schedule={"block": 64, "epochs": [[0, ["proc1", "proc2"]]]})],
        [pack_control("shutdown")],
    ]


def valid_data() -> list[list[bytes]]:
    """Real data-socket messages (header and payload parts), built with the project's packers."""
    recs = _records(0, 3)
    events = np.zeros(3, EVENT_FIELDS)
    events["seq"] = recs["seq"]
    events["present"] = 1
    table = np.zeros(3, [("seq", "<u8"), ("area", "<f8")])
    table["seq"] = recs["seq"]
    ev = pack_events(RUN, "pulses", events, {"synth1": recs}, {"peaks": table}, DT.itemsize)
    return [
        [pack_credit(16, RUN)],
        [pack_credit(1, RUN)],
        [pack_credit(0, RUN)],
        [pack_frames_header(RUN, "pulses", "synth1", recs), recs.tobytes()],
        [pack_frames_header(RUN, "pulses", "synth1", recs[:1]), recs[:1].tobytes()],
        [pack_gap(RUN, "pulses", "synth1", 0, 9, "ring_overrun")],
        [ev[0], *(np.ascontiguousarray(p).tobytes() for p in ev[1:])],
    ]


WEIRD = [None, True, False, 0, -1, 1, 2, 255, 2**31, 2**63 - 1, -2**63, 2**64 - 1, 1.5, -0.0,
         float("nan"), float("inf"), "", "x", "1", "2", "credit", "é\x00\udbff".encode("utf-8", "surrogatepass"),
         b"", b"\x00\xff", [], [1, "a", None], {}, {"v": PROTOCOL_VERSION}, {1: 2, b"k": [3]},
         msgpack.ExtType(5, b"ext"), msgpack.Timestamp(1, 2)]
BAD_VERSION = [PROTOCOL_VERSION - 1, PROTOCOL_VERSION + 1, 0, -1, 255, 2**64 - 1, str(PROTOCOL_VERSION),
               float(PROTOCOL_VERSION),
               bytes([PROTOCOL_VERSION]), None, [PROTOCOL_VERSION], True, {"v": PROTOCOL_VERSION}]
BAD_TYPE = ["nonsense", "", "CREDIT", "credit ", "credit\x00", "hello\n", 7, None, True, b"credit", ["credit"],
            {"t": "credit"}, "launch_missiles"]
OTHER_TYPE = sorted(CONTROL_SCHEMA) + sorted(DATA_SCHEMA)   # a known type with the wrong fields for it
BAD_RUN = [RUN + 1, RUN - 1, 0, -1, 2**63 - 1, 2**64 - 1, -2**63, str(RUN), float(RUN), True, None, [RUN]]
BAD_N = [-1, -2, -2**63, 2**64 - 1, 10**12, 2**31, "10", 1.5, float(16), True, False, None, [], {}, float("inf")]
NASTY = [
    b"\xc1",                                     # the one byte msgpack never uses
    b"\xdd\xff\xff\xff\xff" + b"\x00" * 8,        # array32 of 4 G elements, 8 bytes of data
    b"\xdf\xff\xff\xff\xff" + b"\x00" * 8,        # map32 of 4 G pairs
    b"\xdb\xff\xff\xff\xff" + b"a" * 8,           # str32 of 4 GB
    b"\xc6\xff\xff\xff\xff" + b"a" * 8,           # bin32 of 4 GB
    b"\xc9\xff\xff\xff\xff\x05" + b"a" * 8,       # ext32 of 4 GB
    b"\x91" * 3000 + b"\x00",                    # arrays nested 3000 deep
    b"\x81\xa1v" * 2000 + b"\x02",               # maps nested 2000 deep
    b"\x82\x91\x00\x01\xa1t\xa6credit",          # a map whose key is an array (unhashable)
    b"\x82\x80\x01\xa1v\x02",                     # a map whose key is a map
    msgpack.packb({"v": PROTOCOL_VERSION, "t": "credit", "n": 1, "run": RUN}) + b"\x00",   # trailing byte
    msgpack.packb({"v": PROTOCOL_VERSION, "t": "credit", "n": 1, "run": RUN}) * 2,          # two maps
    b"\xd6\xff\x00\x00\x00\x01",                  # a msgpack timestamp alone
    b"\xc7\x00\x05",                             # an empty ext
    b"\xa5\xff\xfe\xfd\xfc\xfb",                  # a str that is not UTF-8
]


def _pick(rng: np.random.Generator, items: list):
    return items[int(rng.integers(len(items)))]


def random_msgpack(rng: np.random.Generator, depth: int = 0):
    """A random msgpack-able value (what a confused peer might send)."""
    kind = int(rng.integers(10 if depth < 4 else 6))
    if kind == 0:
        return int(rng.integers(-2**63, 2**63 - 1, dtype=np.int64))
    if kind == 1:
        return float(rng.normal() * 10 ** int(rng.integers(0, 30)))
    if kind == 2:
        return rng.bytes(int(rng.integers(0, 40))).decode("latin-1")
    if kind == 3:
        return rng.bytes(int(rng.integers(0, 40)))
    if kind == 4:
        return _pick(rng, WEIRD)
    if kind == 5:
        return _pick(rng, ["v", "t", "n", "run", "credit", "frames", PROTOCOL_VERSION])
    if kind in (6, 7):
        return [random_msgpack(rng, depth + 1) for _ in range(int(rng.integers(0, 6)))]
    keys = ["v", "t", "n", "run", "stream", "module", "first", "last", 0, 1, b"v", None]
    return {(_pick(rng, keys) if rng.random() < 0.7 else str(rng.integers(1000))): random_msgpack(rng, depth + 1)
            for _ in range(int(rng.integers(0, 8)))}


def mutate_bytes(raw: bytes, rng: np.random.Generator) -> bytes:
    b = bytearray(raw)
    op = int(rng.integers(6))
    if op == 0 and b:                                    # flip 1..8 bytes
        for pos in rng.integers(0, len(b), size=int(rng.integers(1, 9))):
            b[int(pos)] ^= int(rng.integers(1, 256))
    elif op == 1:                                        # truncate
        del b[int(rng.integers(0, len(b) + 1)):]
    elif op == 2:                                        # extend
        b += rng.bytes(int(rng.integers(1, 300)))
    elif op == 3:                                        # insert random bytes
        pos = int(rng.integers(0, len(b) + 1))
        b[pos:pos] = rng.bytes(int(rng.integers(1, 16)))
    elif op == 4 and b:                                  # overwrite a run of bytes
        pos = int(rng.integers(0, len(b)))
        chunk = rng.bytes(int(rng.integers(1, 16)))
        b[pos:pos + len(chunk)] = chunk
    else:                                                # duplicate
        b = b + b
    return bytes(b)


def mutate_fields(msg: dict, rng: np.random.Generator, rounds: int = 1) -> object:
    """A valid message with wrong field values or types, missing or extra fields, or not a map."""
    m = dict(msg)
    for _ in range(rounds):
        op = int(rng.integers(11))
        keys = list(m)
        if op == 0:
            m["v"] = _pick(rng, BAD_VERSION)
        elif op == 1:
            m["t"] = _pick(rng, BAD_TYPE)
        elif op == 2:
            m["t"] = _pick(rng, OTHER_TYPE)
        elif op == 3:
            m["run"] = _pick(rng, BAD_RUN)
        elif op == 4:
            m["n"] = _pick(rng, BAD_N)
        elif op == 5 and keys:                           # any field: another type or value
            m[_pick(rng, keys)] = _pick(rng, WEIRD)
        elif op == 6 and keys:                           # a required field missing
            del m[_pick(rng, keys)]
        elif op == 7:                                    # extra fields, keys of any type
            for _ in range(int(rng.integers(1, 4))):
                m[_pick(rng, ["x", "", 0, -5, b"v", 1.5, None, "v ", "T"])] = random_msgpack(rng, 2)
        elif op == 8 and keys:                           # strings where numbers belong, and back
            k = _pick(rng, keys)
            m[k] = str(m[k]) if not isinstance(m[k], str) else len(m[k])
        elif op == 9:                                    # not a map at all
            return _pick(rng, [list(m.items()), list(m.values()), m.get("t"), [m], str(m)])
        else:                                            # a field replaced by a random structure
            m[_pick(rng, keys or ["v"])] = random_msgpack(rng, 1)
    return m


def mutated_valid(template: list[bytes], rng: np.random.Generator) -> list[bytes]:
    parts = list(template)
    op = rng.random()
    if op < 0.5:       # field-level: decode the header, change it, pack it again
        head = msgpack.unpackb(parts[0], raw=False, strict_map_key=False)
        new = mutate_fields(head, rng, rounds=int(rng.integers(1, 4)))
        parts[0] = msgpack.packb(new, use_bin_type=bool(rng.random() < 0.5))
    elif op < 0.85:    # byte-level, on the header or on a payload part
        i = 0 if len(parts) == 1 or rng.random() < 0.7 else int(rng.integers(1, len(parts)))
        parts[i] = mutate_bytes(parts[i], rng)
    else:              # wrong framing: parts added, dropped, duplicated, swapped
        op2 = int(rng.integers(4))
        if op2 == 0:
            parts = parts + [rng.bytes(int(rng.integers(0, 64))) for _ in range(int(rng.integers(1, 4)))]
        elif op2 == 1 and len(parts) > 1:
            parts = parts[:-1]
        elif op2 == 2:
            parts = parts + parts
        else:
            parts = parts[::-1] if len(parts) > 1 else [b"", *parts]
    return parts


def build_corpus(rng: np.random.Generator, n: int, control_side: bool) -> tuple[list[list[bytes]], dict]:
    """n messages (each a list of frames) for one endpoint, and how many of each category."""
    ctl, data = valid_control(), valid_data()
    # templates of the endpoint's own protocol are the likelier ones, but both are sent to both
    own, other = (ctl, data) if control_side else (data, ctl)
    out: list[list[bytes]] = []
    counts = dict.fromkeys(("random_bytes", "random_multipart", "random_msgpack", "nasty", "valid",
                            "mutated_valid"), 0)
    for _ in range(n):
        r = rng.random()
        if r < 0.20:
            cat, msg = "random_bytes", [rng.bytes(int(rng.integers(0, 2001)))]
        elif r < 0.30:
            cat, msg = "random_multipart", [rng.bytes(int(rng.integers(0, 400)))
                                            for _ in range(int(rng.integers(2, 7)))]
        elif r < 0.40:
            cat, msg = "random_msgpack", [msgpack.packb(random_msgpack(rng), use_bin_type=True)]
        elif r < 0.43:
            cat, msg = "nasty", [_pick(rng, NASTY)]
        elif r < 0.47:    # unchanged valid messages: refused for who sends them
            cat, msg = "valid", list(_pick(rng, own if rng.random() < 0.75 else other))
        else:
            cat, msg = "mutated_valid", mutated_valid(_pick(rng, own if rng.random() < 0.75 else other), rng)
        counts[cat] += 1
        out.append(msg)
    return out, counts


# --------------------------------------------------------------------------- helpers
def _synth1_stats(run_root: Path) -> tuple[int, str]:
    """(rejected, state) of synth1 in the last stats.csv row that has it; (-1, "") if none yet."""
    stats = next(iter(run_root.glob("*/stats.csv")), None)
    last = (-1, "")
    if stats is None:
        return last
    with open(stats, newline="") as f:
        for row in csv.DictReader(f):
            if row.get("node") == "synth1" and (row.get("rejected") or "").isdigit():
                last = (int(row["rejected"]), row["state"])
    return last


def _coordinator_counted(run_root: Path, n: int) -> bool:
    """The coordinator logs its 1st..20th and every 1000th rejection: has it logged the n-th?"""
    log = next(iter(run_root.glob("*/log.txt")), None)
    return log is not None and f"rejected #{n}: control message from" in log.read_text(errors="replace")


# --------------------------------------------------------------------------- the tests
@pytest.mark.hosts("ctl", "a1", "p1", "p2", "evil")
def test_fuzz_control_and_data_sockets_of_a_running_system(tmp_path, testnet):
    """Each node on a namespace host of its own; the fuzz comes from another host, `evil`."""
    control_port = free_port()
    data_port = free_port()
    while data_port == control_port:
        data_port = free_port()
    topo = on_hosts(small_topology(**{"run.frames": None, "acquisition.synth1.source.rate": 2000,
                                      "control.port": control_port, "acquisition.synth1.data_port": data_port}),
                    testnet, {"synth1": "a1", "proc1": "p1", "proc2": "p2"})
    rng = np.random.default_rng(SEED)
    to_control, ctl_counts = build_corpus(rng, PER_ENDPOINT, control_side=True)
    to_data, data_counts = build_corpus(rng, PER_ENDPOINT, control_side=False)
    for counts in (ctl_counts, data_counts):   # the mix really is a mix
        assert counts["mutated_valid"] > 2000 and all(c > 50 for c in counts.values()), counts
    plan = [("control", m) for m in to_control] + [("data", m) for m in to_data]
    plan = [plan[int(i)] for i in rng.permutation(len(plan))]     # interleaved
    assert len(plan) == TOTAL
    spec = tmp_path / "fuzz.msgpack"
    spec.write_bytes(msgpack.packb({
        "endpoints": {"control": f"tcp://{testnet.addresses['ctl']}:{control_port}",
                      "data": f"tcp://{testnet.addresses['a1']}:{data_port}"},
        "sockets": SOCKETS_PER_ENDPOINT, "budget_s": SEND_BUDGET_S, "plan": plan}))
    run_root = tmp_path / "runs"
    seen: dict = {}

    def fire(proc) -> None:
        wait_for_frames(run_root, "synth1", 200)
        assert proc.poll() is None, "the run ended before the fuzz"
        t0 = time.monotonic()
        fuzzer = subprocess.Popen([*testnet.exec_prefix("evil"), sys.executable, str(FUZZFIRE), str(spec)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            ready, _, _ = select.select([fuzzer.stdout], [], [], SEND_BUDGET_S + 10)
            line = fuzzer.stdout.readline() if ready else ""
            assert line, f"the fuzzer said nothing: {fuzzer.poll()} {fuzzer.stderr.read() if fuzzer.poll() else ''}"
            seen.update(json.loads(line))
            # Until both receivers have counted all of it (the data node's count via stats.csv,
            # the coordinator's via its log of the 5000th rejection), so that nothing is still
            # queued when the fuzzer's sockets close (LINGER 0) or when the run stops.
            deadline = time.monotonic() + SYNC_BUDGET_S
            while time.monotonic() < deadline:
                rejected, state = _synth1_stats(run_root)
                if rejected >= PER_ENDPOINT and _coordinator_counted(run_root, PER_ENDPOINT):
                    seen["synced"] = (rejected, state, proc.poll())
                    break
                time.sleep(0.1)
            seen["fuzz_s"] = time.monotonic() - t0
            fuzzer.communicate("done\n", timeout=10)
        finally:
            if fuzzer.poll() is None:
                fuzzer.kill()
                fuzzer.communicate()

    code, summary, err = run_disturbed(write_topology(tmp_path, topo), fire, "--duration", str(DURATION),
                                       wrap=testnet.exec_prefix("ctl"), timeout=60)
    tail = err[-3000:]
    # -- every message went out, and was counted while the run was running
    assert seen["sent"] == {"control": PER_ENDPOINT, "data": PER_ENDPOINT}
    assert "synced" in seen, f"receivers did not count the fuzz within {SYNC_BUDGET_S} s: " \
                             f"synth1 stats {_synth1_stats(run_root)}; {summary and summary['control']}"
    assert seen["synced"][1:] == ("running", None), seen      # counted before the stop: it is in the eor
    # -- no crash: the run completed, nobody lost, nobody reported an error, every node exited 0
    assert code == 0, tail
    assert summary["result"] == "completed" and summary["stop_reason"] == "duration", summary["message"]
    for name, node in summary["nodes"].items():
        assert not node["lost"] and node["errors"] == [] and node["exit_code"] == 0, (name, node["lost_reason"],
                                                                                        node["errors"])
        assert node["counters"].get("rejected_control", 0) == 0, name   # nothing reached a node's control
    # -- all counted as rejected, exactly once each (see the module docstring for why equality holds)
    assert summary["control"]["rejected"] == PER_ENDPOINT
    acq = summary["nodes"]["synth1"]["report"]
    assert acq["rejected"] == PER_ENDPOINT
    assert summary["control"]["rejected"] + acq["rejected"] == TOTAL
    for proc_name in ("proc1", "proc2"):                        # nothing leaked through to the receivers
        assert summary["nodes"][proc_name]["report"]["rejected"] == 0, proc_name
    # -- the run's data intact: books balanced, every seq saved once, the bytes the source made
    produced = summary["books"]["produced"]
    assert produced > 2000 * 3, produced
    assert summary["books"]["balanced"] and summary["books"]["saved"] == produced
    assert summary["books"]["missing"] == 0 and summary["books"]["duplicates"] == 0
    run_dir = Path(summary["run_dir"])
    saved, missing = assert_books_by_seq(run_dir, produced)
    assert len(saved) == produced and not missing
    books = books_by_seq(summary)
    assert set(books) == {"synth1"} and set(books["synth1"]) == {"saved"}
    assert acq["sent_frames"] == produced and acq["send_failed"] == []
    assert sum(b - a for rs in acq["shipped"].values() for a, b in rs) == produced
    frames = saved_frames(run_dir)
    topo_run = load_topology(run_dir / "topology.yaml")
    expected = make_source(topo_run.acquisition["synth1"].source, topo_run.streams["pulses"]).frames(0, produced)
    for field in ("timestamp", "flags", "IN1", "IN2"):
        assert np.array_equal(frames[field], expected[field]), field
    print(f"fuzz: sent {seen['sent']} in {seen['send_s']:.2f} s, counted after {seen['fuzz_s']:.2f} s; "
          f"control mix {ctl_counts}; data mix {data_counts}; produced {produced}")


class _FakeSocket:
    """What `recv_multipart(NOBLOCK)` of a ROUTER returns, from a list, then zmq.Again."""

    def __init__(self, messages: list[list[bytes]]) -> None:
        self.queue = deque(messages)

    def recv_multipart(self, flags: int = 0) -> list[bytes]:
        if not self.queue:
            raise zmq.Again()
        return self.queue.popleft()


def _oracle(parts: list[bytes], schema: dict) -> dict | None:
    """The message a receiver must accept (independent of wire.py): one body part holding a
    msgpack map with the right version, a known type and every required field of its type.
    The version must be the int itself (a float 2.0 is refused), and a `stats` message's counters
    numbers or maps of numbers."""
    if len(parts) != 1:
        return None
    try:
        msg = msgpack.unpackb(parts[0], raw=False, strict_map_key=False)
    except Exception:
        return None
    if not isinstance(msg, dict) or type(msg.get("v")) is not int or msg.get("v") != PROTOCOL_VERSION \
            or not isinstance(msg.get("t"), str) \
            or msg["t"] not in schema:
        return None
    for key, typ in schema[msg["t"]].items():
        val = msg.get(key)
        if not isinstance(val, typ) or (typ is int and isinstance(val, bool)):
            return None
    if msg["t"] == "stats":
        def num(v):
            return isinstance(v, (int, float)) and not isinstance(v, bool)
        for k, v in msg["counters"].items():
            if not isinstance(k, str) or not (num(v) or isinstance(v, dict)
                                              and all(isinstance(p, str) and num(x) for p, x in v.items())):
                return None
    return msg


def test_fuzz_corpus_through_the_receivers_in_process():
    """The same corpus, as a known node and a known receiver, through the receivers' own code."""
    rng = np.random.default_rng(SEED)
    to_control, _ = build_corpus(rng, PER_ENDPOINT, control_side=True)
    to_data, _ = build_corpus(rng, PER_ENDPOINT, control_side=False)
    corpus = to_control + to_data

    # the parsers: a dict that passed, or ProtocolError; anything else escaping is a bug
    for parts in corpus:
        for part in parts:
            for unpack, schema in ((unpack_control, CONTROL_SCHEMA), (unpack_data_header, DATA_SCHEMA)):
                try:
                    msg = unpack(part)
                except ProtocolError:
                    continue
                assert isinstance(msg, dict) and msg["t"] in schema

    # the coordinator's control ROUTER, from a node's identity and from a stranger's
    for ident, known in ((b"synth1", True), (b"fuzz-0", False)):
        server = ControlServer.__new__(ControlServer)          # its socket replaced by the corpus
        server.known, server.rejected = {"synth1", "proc1", "proc2"}, 0
        server.sock = _FakeSocket([[ident, *parts] for parts in corpus])
        accepted = server.receive()
        expect = [m for parts in corpus if (m := _oracle(parts, CONTROL_SCHEMA)) is not None] if known else []
        assert server.rejected + len(accepted) == len(corpus)
        # compared packed: a NaN field is not equal to itself
        assert [msgpack.packb(m) for _, m in accepted] == [msgpack.packb(m) for m in expect]

    # the acquisition node's shipper, from a receiver's identity and from a stranger's
    for ident, known in ((b"proc1", True), (b"fuzz-4", False)):
        shipper = Shipper(None, _FakeSocket([[ident, *parts] for parts in corpus]), RUN, "pulses", "synth1",
                          ["proc1", "proc2"], 16)
        try:
            shipper.on_readable()
        finally:
            os.close(shipper.done_fd)
        credits = [m["n"] for parts in corpus if (m := _oracle(parts, DATA_SCHEMA)) is not None
                   and m["t"] == "credit" and m["run"] == RUN and m["n"] >= 0] if known else []
        assert shipper.rejected == len(corpus) - len(credits)
        assert shipper.credits == {"proc1": sum(credits), "proc2": 0}


def test_a_float_protocol_version_is_rejected():
    raw = msgpack.packb({"v": float(PROTOCOL_VERSION), "t": "credit", "n": 5, "run": RUN})
    shipper = Shipper(None, _FakeSocket([[b"proc1", raw]]), RUN, "pulses", "synth1", ["proc1"], 16)
    try:
        shipper.on_readable()
    finally:
        os.close(shipper.done_fd)
    assert shipper.rejected == 1 and shipper.credits == {"proc1": 0}


def test_stats_with_non_numeric_counters_are_rejected_on_arrival():
    """The coordinator does arithmetic on counters: a map that passes the field types but holds
    a string (a buggy node; strangers are refused before) is rejected by the parser."""
    for counters in ({"frames": "many"}, {"stalled_s": {"p1": "x"}}, {"stalled_s": [1]}, {1: 2}):
        raw = msgpack.packb({"v": PROTOCOL_VERSION, "t": "stats", "state": "running", "counters": counters})
        with pytest.raises(ProtocolError, match="counter"):
            unpack_control(raw)
    ok = {"frames": 3, "cpu_s": 0.5, "stalled_s": {"p1": 0.25}}
    assert unpack_control(msgpack.packb({"v": PROTOCOL_VERSION, "t": "stats", "state": "x",
                                         "counters": ok}))["counters"] == ok
