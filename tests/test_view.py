"""Live view (coordinator/tap.py, coordinator/viewer.py): taps on real sockets, the page in Chromium."""
from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import matplotlib.image
import msgpack
import numpy as np
import pytest
import zmq

from conftest import chromium, needs_chromium
from coordinator.frames import frame_dtype
from coordinator.tap import TapFormatError, TapPublisher, TapReader, decode, encode_frame, encode_histograms
from coordinator.viewer import LiveState, ViewError, ViewServer, find_taps, main

VPC = 1 / 8192                      # volts per count of a STEMlab 125-14 (LV)
PRE = 128
META = {"sample_ns": 8.0, "pretrigger": PRE, "volts_per_count": {"IN1": VPC, "IN2": VPC},
        "trigger_level": 0.05, "trigger_channel": "IN1"}
TRACE_RGB = np.array([0x1F, 0x77, 0xB4])


def pulse_record(seq: int = 0, samples: int = 1024, amp: int = 4096, pre: int = PRE) -> np.ndarray:
    """One int16 frame: IN1 a pulse of `amp` counts starting at the trigger sample, IN2 half of it, negative."""
    rec = np.zeros((), frame_dtype({"IN1": "int16", "IN2": "int16"}, samples))
    rec["seq"], rec["timestamp"], rec["flags"] = seq, 1_000_000 + seq, 0
    x = np.arange(samples) - pre
    shape = np.where(x >= 0, np.exp(-np.clip(x, 0, None) / (samples / 8)), 0.0)
    rec["IN1"] = np.round(amp * shape).astype(np.int16)
    rec["IN2"] = np.round(-amp / 2 * shape).astype(np.int16)
    return rec


HIST = {"name": "spectrum", "field": "height", "unit": "V", "edges": np.linspace(0.0, 1.0, 11),
        "counts": np.arange(10), "underflow": 1, "overflow": 2, "entries": 48}


@pytest.fixture
def ctx():
    c = zmq.Context()
    yield c
    c.term()      # hangs if a test left a socket open: every socket is closed with LINGER 0


def receive(reader: TapReader, want, publish=None, timeout: float = 5.0) -> dict | None:
    """Poll until a message satisfying `want` arrives (at most 200 polls and `timeout` s)."""
    deadline = time.monotonic() + timeout
    for _ in range(200):
        if publish is not None:
            publish()
        for m in reader.poll(25):
            if want(m):
                return m
        if time.monotonic() > deadline:
            break
    return None


# -- tap --------------------------------------------------------------------------------------

def test_tap_roundtrip(ctx) -> None:
    pub = TapPublisher(ctx, "127.0.0.1", max_rate=1000)
    reader = TapReader([pub.endpoint], ctx)
    try:
        assert pub.endpoint.startswith("tcp://127.0.0.1:")
        rec = pulse_record(seq=7)

        def publish() -> None:
            pub.publish_frame("pulses", "rp1", rec, META)
            pub.publish_histograms("proc1", [HIST])

        frame = receive(reader, lambda m: m["kind"] == "frame", publish)
        hist = receive(reader, lambda m: m["kind"] == "hist", publish)
    finally:
        reader.close()
        pub.close()
        pub.close()     # idempotent
    assert frame is not None and hist is not None
    assert (frame["stream"], frame["module"], frame["seq"], frame["timestamp"]) == ("pulses", "rp1", 7, 1_000_007)
    assert frame["samples"] == 1024 and frame["meta"] == META
    assert set(frame["channels"]) == {"IN1", "IN2"}
    for ch in ("IN1", "IN2"):
        assert frame["channels"][ch].dtype == np.int16
        np.testing.assert_array_equal(frame["channels"][ch], rec[ch])
    assert frame["channels"]["IN1"].max() == 4096
    assert (hist["node"], hist["name"], hist["field"], hist["unit"]) == ("proc1", "spectrum", "height", "V")
    np.testing.assert_array_equal(hist["edges"], HIST["edges"])
    np.testing.assert_array_equal(hist["counts"], HIST["counts"])
    assert (hist["underflow"], hist["overflow"], hist["entries"]) == (1, 2, 48)
    assert reader.rejected == 0
    assert pub.publish_frame("pulses", "rp1", rec, META) is False   # closed: dropped, no error


def test_frame_record_forms() -> None:
    """A 1-element array works like a 0-d record; a float channel keeps its dtype; lists decode."""
    rec = np.zeros(1, frame_dtype({"A": "float32"}, 5))
    rec["A"] = [[0.5, -0.25, 0, 1, 2]]
    (m,) = decode(encode_frame("s", "m", rec, {"sample_ns": 4}))
    assert m["channels"]["A"].dtype == np.float32 and m["channels"]["A"].tolist() == [0.5, -0.25, 0, 1, 2]
    body = msgpack.packb([{"node": "n", "name": "h", "edges": [0, 1, 2], "counts": [3, 4]}])
    (h,) = decode([b"hist", body])
    assert h["counts"].tolist() == [3, 4] and h["entries"] == 7 and h["field"] == "h"
    with pytest.raises(ValueError):
        encode_frame("s", "m", np.zeros(2, rec.dtype), {})
    with pytest.raises(ValueError):
        encode_histograms("n", [{"name": "h", "edges": [0, 1], "counts": [1, 2]}])


def test_due_rate_limit_injected_clock(ctx) -> None:
    now = [0.0]
    pub = TapPublisher(ctx, "127.0.0.1", max_rate=5, clock=lambda: now[0])
    try:
        accepted = []
        for i in range(1000):                       # one second in 1 ms steps
            now[0] = i * 0.001
            if pub.due("rp1"):
                accepted.append(now[0])
        assert len(accepted) == 5, accepted
        assert all(b - a >= 0.2 - 1e-9 for a, b in zip(accepted, accepted[1:]))
        now[0] = 0.1
        assert pub.due("proc1")                     # every key has its own budget
        assert not pub.due("proc1")
        now[0] = 100.0
        assert pub.due("rp1")
        with pytest.raises(ValueError):
            TapPublisher(ctx, "127.0.0.1", max_rate=0)
    finally:
        pub.close()


def test_due_rate_limit_real_clock(ctx) -> None:
    pub = TapPublisher(ctx, "127.0.0.1", max_rate=5)
    try:
        accepted = 0
        t0 = time.monotonic()
        for _ in range(5000):
            if time.monotonic() - t0 >= 0.5:
                break
            accepted += pub.due("k")
            time.sleep(0.0005)
        assert 1 <= accepted <= 4
    finally:
        pub.close()


def _header(**over) -> bytes:
    h = {"stream": "s", "module": "m", "seq": 1, "timestamp": 2, "flags": 0, "channels": {"A": "<i2"},
         "samples": 4, "meta": {}}
    h.update(over)
    return msgpack.packb(h)


GARBAGE = [
    [b"frame"],
    [b"frame", b"\xc1"],                                                     # not msgpack
    [b"frame", msgpack.packb([1, 2])],                                       # not a map
    [b"frame", _header()],                                                   # data part missing
    [b"frame", _header(), b"\x00" * 3],                                      # wrong size
    [b"frame", _header(channels={"A": "U4"}), b"\x00" * 16],                 # not numeric
    [b"frame", _header(channels={"A": "nonsense"}), b"\x00" * 8],
    [b"frame", _header(samples=-1), b""],
    [b"frame", _header(seq=True), b"\x00" * 8],
    [b"frame", _header(meta=[1]), b"\x00" * 8],
    [b"hist", b"junk"],
    [b"hist", msgpack.packb({"node": "n"})],
    [b"hist", msgpack.packb([{"node": "n", "name": "h", "edges": [0, 1, 2], "counts": [1]}])],
    [b"hist", msgpack.packb([{"node": "n", "name": "h", "edges": [0, 2, 1], "counts": [1, 1]}])],
    [b"hist", msgpack.packb([{"node": "n", "name": "h", "edges": b"\x00" * 7, "counts": [1]}])],
    [b"hist", msgpack.packb([{"node": "n", "name": "h", "edges": [0, 1], "counts": [2 ** 63]}])],
    [b"hist", msgpack.packb([{"node": "n", "name": "h", "edges": [0, 1], "counts": ["x"]}])],
    [b"nonsense", b"x"],
]


def test_garbage_is_counted_not_raised(ctx) -> None:
    for parts in GARBAGE:
        with pytest.raises(TapFormatError):
            decode(parts)
    raw = ctx.socket(zmq.PUB)
    raw.setsockopt(zmq.LINGER, 0)
    port = raw.bind_to_random_port("tcp://127.0.0.1")
    reader = TapReader([f"tcp://127.0.0.1:{port}"], ctx)
    try:
        probe = encode_histograms("n", [HIST])
        assert receive(reader, lambda m: m["kind"] == "hist", lambda: raw.send_multipart(probe)) is not None
        assert reader.rejected == 0
        for parts in GARBAGE:
            raw.send_multipart(parts)
        raw.send_multipart(encode_frame("s", "m", pulse_record(seq=99), META))
        last = receive(reader, lambda m: m["kind"] == "frame" and m["seq"] == 99)
        assert last is not None, "the valid frame after the garbage never came"
        assert reader.rejected == len(GARBAGE), reader.last_error
    finally:
        reader.close()
        raw.close(0)


# -- live state -------------------------------------------------------------------------------

def test_snapshot_volts_and_trigger_time() -> None:
    state = LiveState()
    state.update(decode(encode_frame("pulses", "rp1", pulse_record(seq=3), META)))
    state.update([{"kind": "unknown"}])
    snap = json.loads(json.dumps(state.snapshot(), allow_nan=False))      # JSON-able
    (stream,) = snap["streams"]
    assert stream["name"] == "pulses" and stream["trigger_level"] == 0.05 and stream["trigger_channel"] == "IN1"
    assert stream["unit"] == "V" and stream["time_unit"] == "ns"
    in1, in2 = stream["traces"]
    assert (in1["channel"], in2["channel"]) == ("IN1", "IN2") and in1["seq"] == 3
    assert in1["decimation"] == "none" and len(in1["t"]) == len(in1["v"]) == 1024
    assert in1["t"][0] == -PRE * 8.0 and in1["t"][PRE] == 0.0 and in1["t"][1] - in1["t"][0] == 8.0
    assert max(in1["v"]) == pytest.approx(0.5) and in1["v"][int(np.argmax(in1["v"]))] == in1["v"][PRE]
    assert min(in2["v"]) == pytest.approx(-0.25)
    assert in1["v"][PRE - 1] == 0.0


def test_snapshot_decimates_keeping_the_peak() -> None:
    samples, pre = 16384, 2048
    rec = pulse_record(samples=samples, pre=pre, amp=0)
    rec["IN1"][pre] = 4096                     # one-sample spike: a stride would likely miss it
    rec["IN1"][pre + 5000] = -2048
    meta = dict(META, pretrigger=pre, sample_ns=16.0)
    state = LiveState()
    state.update(decode(encode_frame("pulses", "rp1", rec, meta)))
    tr = state.snapshot()["streams"][0]["traces"][0]
    assert tr["decimation"] == "minmax" and tr["samples"] == samples
    assert len(tr["t"]) == len(tr["v"]) == tr["points"] <= 2000
    i = int(np.argmax(tr["v"]))
    assert tr["v"][i] == pytest.approx(0.5) and tr["t"][i] == 0.0
    j = int(np.argmin(tr["v"]))
    assert tr["v"][j] == pytest.approx(-0.25) and tr["t"][j] == 5000 * 16.0
    bucket = -(-samples // 1000)                # min/max pairs of 1000 buckets: the whole record
    assert tr["t"] == sorted(tr["t"]) and tr["t"][0] == -pre * 16.0
    assert tr["t"][-1] >= (samples - pre - bucket) * 16.0


def test_snapshot_float_channels_and_histogram_sum() -> None:
    rec = np.zeros((), frame_dtype({"V": "float32", "C": "int16"}, 8))
    rec["V"] = [0, 0.125, 0.25, np.nan, 0, 0, 0, 0]
    rec["C"] = [0, 10, 20, 0, 0, 0, 0, 0]
    state = LiveState()
    state.update(decode(encode_frame("fast", "b1", rec, {"sample_ns": 2.0, "pretrigger": 1,
                                                         "volts_per_count": None, "trigger_level": None})))
    h2 = dict(HIST, counts=np.ones(10, int), underflow=0, overflow=0, entries=10)
    other = dict(HIST, edges=np.linspace(0, 2, 11))
    for node, h in (("p1", HIST), ("p2", h2), ("p3", other)):
        state.update(decode(encode_histograms(node, [h])))
    snap = json.loads(json.dumps(state.snapshot(), allow_nan=False))
    (stream,) = snap["streams"]
    v, c = stream["traces"]
    assert v["unit"] == "V" and v["v"] == [0, 0.125, 0.25, None, 0, 0, 0, 0]        # NaN: a gap
    assert c["unit"] == "counts" and c["v"][2] == 20                                 # no scale known
    assert v["t"][:3] == [-2.0, 0.0, 2.0] and stream["trigger_level"] is None
    hists = {h["name"]: h for h in snap["histograms"]}
    assert set(hists) == {"spectrum", "spectrum@p3"}
    s = hists["spectrum"]
    assert s["nodes"] == ["p1", "p2"] and s["counts"] == list(range(1, 11))
    assert (s["underflow"], s["overflow"], s["entries"]) == (1, 2, 58)
    assert s["edges"] == pytest.approx(np.linspace(0, 1, 11).tolist()) and s["unit"] == "V"


# -- finding taps -----------------------------------------------------------------------------

def test_find_taps(tmp_path: Path) -> None:
    run = tmp_path / "run-00001"
    run.mkdir()
    with pytest.raises(ViewError, match=r"run-00001 has no live.json, nor a run directory with one"):
        find_taps(str(run))
    with pytest.raises(ViewError, match="no such run directory"):
        find_taps(str(tmp_path / "nowhere"))
    (run / "live.json").write_text("{not json")
    with pytest.raises(ViewError, match="live.json: cannot read it as JSON"):
        find_taps(str(run))
    (run / "live.json").write_text(json.dumps({"taps": {}}))
    with pytest.raises(ViewError, match="no taps"):
        find_taps(str(run))
    (run / "live.json").write_text(json.dumps({"taps": {"rp1": "http://x:1"}}))
    with pytest.raises(ViewError, match="rp1"):
        find_taps(str(run))
    taps = {"rp1": "tcp://127.0.0.1:5601", "proc1": "tcp://daq2:5602"}
    (run / "live.json").write_text(json.dumps({"run": "run-00001", "taps": taps}))
    assert find_taps(str(run)) == list(taps.values())
    assert find_taps(str(run / "live.json")) == list(taps.values())
    newer = tmp_path / "run-00002"           # a runs folder: its newest live run
    newer.mkdir()
    (newer / "live.json").write_text(json.dumps({"taps": {"rp1": "tcp://127.0.0.1:5701"}}))
    os.utime(run / "live.json", (1e9, 1e9))
    assert find_taps(str(tmp_path)) == ["tcp://127.0.0.1:5701"]
    assert find_taps("tcp://127.0.0.1:1, tcp://h:2") == ["tcp://127.0.0.1:1", "tcp://h:2"]
    for bad in ("tcp://127.0.0.1", "tcp://h:99999", "tcp://:5"):
        with pytest.raises(ViewError, match="not a tap endpoint"):
            find_taps(bad)


def test_main_reports_bad_target(tmp_path: Path, capsys) -> None:
    assert main(str(tmp_path), 0, False) == 2
    assert f"{tmp_path} has no live.json" in capsys.readouterr().err


# -- server -----------------------------------------------------------------------------------

def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def view_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("view-")]


def test_view_server_serves_data(ctx) -> None:
    pub = TapPublisher(ctx, "127.0.0.1", max_rate=1000)
    server = ViewServer([pub.endpoint], refresh=0.25).start()
    try:
        assert server.url.startswith("http://127.0.0.1:")
        code, page = get(server.url)
        assert code == 200 and b"<canvas" not in page.split(b"<script>")[0]
        for needle in (b'"scope-"', b'"hist-"', b"#1f77b4", b"waiting for data", b"const REFRESH_MS = 250;"):
            assert needle in page, needle
        assert b"http://" not in page and b"https://" not in page, "the page must not fetch anything external"
        snap = json.loads(get(server.url + "data.json")[1])
        assert snap["streams"] == [] and snap["taps"] == [pub.endpoint]
        deadline = time.monotonic() + 10
        for i in range(200):
            pub.publish_frame("pulses", "rp1", pulse_record(seq=i), META)
            pub.publish_histograms("proc1", [HIST])
            snap = json.loads(get(server.url + "data.json")[1])
            if snap["streams"] and snap["histograms"] or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        assert snap["streams"], "no frame reached the viewer"
        tr = snap["streams"][0]["traces"][0]
        assert tr["label"] == "rp1 IN1" and max(tr["v"]) == pytest.approx(0.5) and tr["t"][PRE] == 0.0
        assert snap["histograms"][0]["name"] == "spectrum"
        health = json.loads(get(server.url + "healthz")[1])
        assert health["ok"] and health["frames_seen"] >= 1
        assert get(server.url + "nope")[0] == 404
    finally:
        server.close()
        server.close()   # idempotent
        pub.close()
    assert view_threads() == []


def test_view_server_close_without_start() -> None:
    server = ViewServer(["tcp://127.0.0.1:1"])
    server.close()
    with pytest.raises(RuntimeError):
        server.start()
    assert view_threads() == []


# -- the page in a browser --------------------------------------------------------------------

def trace_pixels(png: Path, colour=TRACE_RGB) -> int:
    """Pixels within a small tolerance of a trace's colour (default: the first's, #1f77b4)."""
    img = matplotlib.image.imread(str(png))
    rgb = np.round(img[..., :3] * 255).astype(int)
    return int(np.count_nonzero(np.all(np.abs(rgb - np.asarray(colour)) <= 12, axis=-1)))


@needs_chromium
def test_page_draws_in_chromium(ctx, tmp_path: Path) -> None:
    pub = TapPublisher(ctx, "127.0.0.1", max_rate=1000)
    server = ViewServer([pub.endpoint], refresh=0.2).start()
    stop = threading.Event()

    def feed() -> None:
        for i in range(2000):
            if stop.is_set():
                return
            pub.publish_frame("pulses", "rp1", pulse_record(seq=i), META)
            pub.publish_histograms("proc1", [HIST])
            stop.wait(0.05)

    feeder = threading.Thread(target=feed, name="test-feed")
    try:
        before = tmp_path / "before.png"
        chromium(server.url, tmp_path / "profile-before", f"--screenshot={before}")
        assert before.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

        feeder.start()
        deadline = time.monotonic() + 10
        for _ in range(200):
            if json.loads(get(server.url + "healthz")[1])["frames_seen"] or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        after = tmp_path / "after.png"
        chromium(server.url, tmp_path / "profile-after", f"--screenshot={after}")
        dom = chromium(server.url, tmp_path / "profile-dom", "--dump-dom").decode(errors="replace")
    finally:
        stop.set()
        if feeder.is_alive():
            feeder.join(timeout=10)
        server.close()
        pub.close()
    assert trace_pixels(before) == 0, "trace colour on the page before any data"
    n = trace_pixels(after)
    assert n > 500, f"only {n} pixels of the trace colour: the oscilloscope was not drawn"
    img = matplotlib.image.imread(str(after))
    assert img.shape[:2] == (900, 1200)
    assert 'id="scope-pulses"' in dom and 'id="hist-spectrum"' in dom
    assert 'id="waiting" style="display: none;"' in dom
