"""Message codecs: what is accepted, and that every kind of malformed input is rejected with a reason."""
from __future__ import annotations

import msgpack
import numpy as np
import pytest

from coordinator import PROTOCOL_VERSION
from coordinator.frames import dtype_signature, frame_dtype
from coordinator.wire import (ProtocolError, pack_control, pack_credit, pack_frames_header,
                              records_from_payload, unpack_control, unpack_data_header)

DT = frame_dtype({"IN1": "int16", "IN2": "int16"}, 16)


def records(seqs) -> np.ndarray:
    r = np.zeros(len(seqs), DT)
    r["seq"] = seqs
    r["IN1"] = np.arange(16)
    return r


def test_control_round_trip():
    raw = pack_control("stats", state="running", counters={"frames": 5})
    assert unpack_control(raw) == {"v": PROTOCOL_VERSION, "t": "stats", "state": "running",
                                   "counters": {"frames": 5}}


def test_sender_checks_its_own_messages():
    with pytest.raises(ProtocolError, match="field 'state'"):
        pack_control("stats", counters={})


@pytest.mark.parametrize("raw, reason", [
    (b"", "not msgpack"),
    (b"\xc1\xc1", "not msgpack"),
    (msgpack.packb([1, 2]), "expected a msgpack map"),
    (msgpack.packb({"t": "heartbeat"}), "protocol version None"),
    (msgpack.packb({"v": PROTOCOL_VERSION + 1, "t": "heartbeat"}), "protocol version"),
    (msgpack.packb({"v": PROTOCOL_VERSION, "t": "launch_missiles"}), "unknown message type"),
    (msgpack.packb({"v": PROTOCOL_VERSION, "t": 7}), "unknown message type"),
    (msgpack.packb({"v": PROTOCOL_VERSION, "t": "error", "message": "x"}), "field 'fatal'"),
    (msgpack.packb({"v": PROTOCOL_VERSION, "t": "source_done", "produced": True}), "field 'produced'"),
    (msgpack.packb({"v": PROTOCOL_VERSION, "t": "source_done", "produced": "5"}), "field 'produced'"),
])
def test_control_rejections(raw, reason):
    with pytest.raises(ProtocolError, match=reason):
        unpack_control(raw)


def test_frames_round_trip_zero_copy():
    recs = records([3, 4, 5])
    header = unpack_data_header(pack_frames_header(1, "pulses", "rp1", recs))
    assert header["first"] == 3 and header["last"] == 5 and header["n"] == 3
    payload = recs.tobytes()
    out = records_from_payload(header, [payload], DT)
    assert np.array_equal(out, recs)
    assert out.base is not None   # a view on the received buffer, not a copy


def test_credit_round_trip():
    assert unpack_data_header(pack_credit(12, run=4))["n"] == 12


def _header(recs, **changes):
    h = unpack_data_header(pack_frames_header(1, "pulses", "rp1", recs))
    h.update(changes)
    return h


@pytest.mark.parametrize("changes, payload_fn, reason", [
    ({}, lambda r: [r.tobytes(), b"x"], "expected 1 payload part"),
    ({"itemsize": DT.itemsize + 2}, lambda r: [r.tobytes()], "record size"),
    ({}, lambda r: [r.tobytes()[:-1]], "payload bytes"),
    ({"n": 0}, lambda r: [b""], "payload bytes"),
    ({"first": 99}, lambda r: [r.tobytes()], "first/last"),
])
def test_frames_rejections(changes, payload_fn, reason):
    recs = records([1, 2, 3])
    with pytest.raises(ProtocolError, match=reason):
        records_from_payload(_header(recs, **changes), payload_fn(recs), DT)


def test_frames_with_decreasing_seqs_rejected():
    recs = records([1, 3, 2])
    recs["seq"][-1] = 3  # header last matches, order broken inside
    recs["seq"][1] = 5
    with pytest.raises(ProtocolError, match="strictly increasing"):
        records_from_payload(_header(recs), [recs.tobytes()], DT)


def test_data_header_rejects_control_types():
    with pytest.raises(ProtocolError, match="unknown message type"):
        unpack_data_header(pack_control("heartbeat"))


def test_dtype_signature_distinguishes_layouts():
    a = frame_dtype({"IN1": "int16"}, 16)
    assert dtype_signature(a) != dtype_signature(frame_dtype({"IN1": "int16"}, 17))
    assert dtype_signature(a) != dtype_signature(frame_dtype({"IN1": "float32"}, 16))
    assert dtype_signature(a) == dtype_signature(frame_dtype({"IN1": "<i2"}, 16))
