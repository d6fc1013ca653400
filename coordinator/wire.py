"""Wire messages (contract): control maps and data batches, packed and validated.

Control: one msgpack map per ZeroMQ message, ``{"v": PROTOCOL_VERSION, "t": type, ...}``.
Data:    multipart ``[header, payload]``: a msgpack header map and the raw bytes of
         ``n`` consecutive frame records of the stream's dtype (header + channels),
         exactly as they sit in the ring, so nothing is serialised per frame.

Every received message goes through `unpack_control` / `unpack_data`, which check
version, type, field types and sizes and raise `ProtocolError` with the reason;
callers count and drop such messages, they never crash on them.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgpack
import numpy as np

from coordinator import PROTOCOL_VERSION


#: Kernel socket buffer asked for on data sockets (the kernel clamps it to net.core.[rw]mem_max).
#: Measured at 1 MiB frames: fewer wake-ups of libzmq's I/O threads, +3..19 % in paired runs.
DATA_SOCKET_BUFFER = 4 << 20


class ProtocolError(ValueError):
    """A received message is malformed or not for us."""


# type -> {field: python type(s)}; fields listed here are required, others allowed.
_NUM = (int, float)
CONTROL_SCHEMA: dict[str, dict[str, Any]] = {
    # node -> coordinator
    "hello": {"role": str, "pid": int, "host": str, "version": str, "incarnation": str},
    "configured": {"info": dict},
    "started": {},
    "stats": {"state": str, "counters": dict},
    "source_done": {"produced": int},
    "eor": {"report": dict},
    "error": {"message": str, "fatal": bool},
    "bye": {},
    # coordinator -> node
    "configure": {"run": int, "topology": dict, "run_dir": str, "params": dict},
    "start": {},
    "stop": {"reason": str},
    "pause": {},
    "resume": {},
    "end": {"expect": dict},
    "peer_lost": {"peer": str},
    "peer_back": {"peer": str, "from_seq": int},
    "schedule": {"stream": str, "schedule": dict},
    "shutdown": {},
    # both ways
    "heartbeat": {},
}

DATA_SCHEMA: dict[str, dict[str, Any]] = {
    # acquisition -> processing: n records follow in one payload part
    "frames": {"run": int, "stream": str, "module": str, "n": int, "first": int, "last": int,
               "itemsize": int},
    # processing -> acquisition: permission to send n more frames (or events, between processing nodes)
    "credit": {"n": int, "run": int},
    # acquisition -> processing (dispatch by schedule): these seqs of `module` will never come
    "gap": {"run": int, "stream": str, "module": str, "first": int, "last": int, "cause": str},
    # processing -> processing (forward/copy): n built events, their parts and their tables
    "events": {"run": int, "stream": str, "n": int, "first": int, "last": int, "modules": list,
               "tables": dict, "itemsize": int},
}

#: Column types a forwarded table may carry (anything else is rejected).
TABLE_TYPES = {"<u8", "<u4", "<u2", "|u1", "<i8", "<i4", "<i2", "|i1", "<f8", "<f4", "|b1"}
#: The events table of a forwarded batch (seq, timestamp, flags, present), as procnode.events has it.
EVENT_FIELDS = [("seq", "<u8"), ("timestamp", "<u8"), ("flags", "<u4"), ("present", "<u4")]


def _check(msg: Any, schema: dict[str, dict[str, Any]], what: str) -> dict:
    if not isinstance(msg, dict):
        raise ProtocolError(f"{what}: expected a msgpack map, got {type(msg).__name__}")
    v = msg.get("v")
    if type(v) is not int or v != PROTOCOL_VERSION:     # 2.0 == 2 in Python; not on the wire
        raise ProtocolError(f"{what}: protocol version {v!r}, this node speaks {PROTOCOL_VERSION}")
    t = msg.get("t")
    fields = schema.get(t) if isinstance(t, str) else None
    if fields is None:
        raise ProtocolError(f"{what}: unknown message type {t!r}")
    for key, typ in fields.items():
        val = msg.get(key)
        if not isinstance(val, typ) or (typ is int and isinstance(val, bool)):
            raise ProtocolError(f"{what} {t!r}: field {key!r} missing or not {getattr(typ, '__name__', typ)}")
    if t == "stats":
        _check_counters(msg["counters"], what)
    return msg


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_counters(counters: dict, what: str) -> None:
    """A node's counters are numbers, or maps of numbers (per peer); the coordinator does
    arithmetic on them, so anything else is refused here rather than failing there."""
    for k, v in counters.items():
        if not isinstance(k, str) or not (_number(v) or isinstance(v, dict) and all(
                isinstance(p, str) and _number(x) for p, x in v.items())):
            raise ProtocolError(f"{what} 'stats': counter {k!r} is not a number or a map of numbers")


#: Rejections logged one by one before the log thins out to every 1000th (a flood of garbage
#: must not fill the disk); every one is counted.
LOG_FIRST_REJECTIONS = 20


def rejection_logged(count: int) -> bool:
    """Rejection number `count` (1-based) is logged: among the first few, or a 1000th."""
    return count <= LOG_FIRST_REJECTIONS or count % 1000 == 0


def log_rejected(logger: Any, count: int, message: str, *args: Any) -> None:
    """Log rejection number `count` if `rejection_logged(count)` (a flood stays readable)."""
    if rejection_logged(count):
        logger.warning("rejected #%d: " + message, count, *args)


def _unpack(raw: bytes, what: str) -> Any:
    try:
        return msgpack.unpackb(raw, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolError(f"{what}: not msgpack ({type(exc).__name__})") from None


def pack_control(t: str, **fields: Any) -> bytes:
    """Build a control message; the schema is checked here too, so a bug shows at the sender."""
    msg = {"v": PROTOCOL_VERSION, "t": t, **fields}
    _check(msg, CONTROL_SCHEMA, "outgoing control message")
    return msgpack.packb(msg, use_bin_type=True)


def unpack_control(raw: bytes) -> dict:
    return _check(_unpack(raw, "control message"), CONTROL_SCHEMA, "control message")


def pack_credit(n: int, run: int) -> bytes:
    return msgpack.packb({"v": PROTOCOL_VERSION, "t": "credit", "n": n, "run": run})


def pack_frames_header(run: int, stream: str, module: str, records: np.ndarray) -> bytes:
    """Header of a data message carrying `records` (consecutive ring slots)."""
    return msgpack.packb({
        "v": PROTOCOL_VERSION, "t": "frames", "run": run, "stream": stream, "module": module,
        "n": len(records), "first": int(records["seq"][0]), "last": int(records["seq"][-1]),
        "itemsize": records.dtype.itemsize,
    })


def unpack_data_header(raw: bytes) -> dict:
    return _check(_unpack(raw, "data message"), DATA_SCHEMA, "data message")


def records_from_payload(header: dict, parts: Sequence[Any], dtype: np.dtype) -> np.ndarray:
    """Zero-copy view of the records of a `frames` message after checking it against `dtype`.

    Checks: one payload part, item size equal to the stream's, byte count n*itemsize,
    header first/last equal to the records' seqs, seqs strictly increasing.
    """
    if len(parts) != 1:
        raise ProtocolError(f"frames message: expected 1 payload part, got {len(parts)}")
    n, itemsize = header["n"], header["itemsize"]
    if itemsize != dtype.itemsize:
        raise ProtocolError(
            f"frames message from {header['module']!r}: record size {itemsize} B, stream "
            f"{header['stream']!r} has {dtype.itemsize} B")
    buf = memoryview(parts[0])
    if n < 1 or buf.nbytes != n * itemsize:
        raise ProtocolError(f"frames message: {buf.nbytes} payload bytes for n={n} x {itemsize} B")
    records = np.frombuffer(buf, dtype=dtype, count=n)
    seq = records["seq"]
    if int(seq[0]) != header["first"] or int(seq[-1]) != header["last"]:
        raise ProtocolError("frames message: header first/last do not match the records' seqs")
    if n > 1 and not bool(np.all(seq[1:] > seq[:-1])):
        raise ProtocolError("frames message: seqs not strictly increasing")
    return records


def pack_gap(run: int, stream: str, module: str, first: int, last: int, cause: str) -> bytes:
    return msgpack.packb({"v": PROTOCOL_VERSION, "t": "gap", "run": run, "stream": stream, "module": module,
                          "first": first, "last": last, "cause": cause})


def pack_events(run: int, stream: str, events: np.ndarray, parts: dict[str, np.ndarray],
                tables: dict[str, np.ndarray], itemsize: int) -> list[Any]:
    """[header, events, one part per module, one buffer per table]: what a forward stage sends."""
    header = msgpack.packb({
        "v": PROTOCOL_VERSION, "t": "events", "run": run, "stream": stream, "n": len(events),
        "first": int(events["seq"][0]), "last": int(events["seq"][-1]), "modules": list(parts),
        "tables": {name: [[c, t.dtype.fields[c][0].str] for c in t.dtype.names] for name, t in tables.items()},
        "itemsize": itemsize})
    return [header, np.ascontiguousarray(events), *(np.ascontiguousarray(p) for p in parts.values()),
            *(np.ascontiguousarray(t) for t in tables.values())]


def _table_dtype(name: str, columns: Any) -> np.dtype:
    if not isinstance(columns, list) or not columns or not all(
            isinstance(c, list) and len(c) == 2 and isinstance(c[0], str) and c[0].isidentifier()
            and c[1] in TABLE_TYPES for c in columns):
        raise ProtocolError(f"events message: table {name!r} has a bad column list")
    names = [c[0] for c in columns]
    if "seq" not in names or len(set(names)) != len(names):
        raise ProtocolError(f"events message: table {name!r} needs one 'seq' column and unique names")
    return np.dtype([(c, t) for c, t in columns])


def events_from_payload(header: dict, parts: Sequence[Any], dtype: np.dtype,
                        modules: Sequence[str]) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Zero-copy views (events, parts by module, tables by name) of an `events` message, checked."""
    n = header["n"]
    mods, tables = header["modules"], header["tables"]
    if not all(isinstance(m, str) and m in modules for m in mods) or len(set(mods)) != len(mods):
        raise ProtocolError(f"events message: modules {mods!r} are not modules of stream {header['stream']!r}")
    if mods and header["itemsize"] != dtype.itemsize:
        raise ProtocolError(f"events message: record size {header['itemsize']} B, stream has {dtype.itemsize} B")
    if len(parts) != 1 + len(mods) + len(tables):
        raise ProtocolError(f"events message: {len(parts)} payload parts for {len(mods)} modules and "
                            f"{len(tables)} tables")
    if n < 1:
        raise ProtocolError("events message: n < 1")
    ev_dtype = np.dtype(EVENT_FIELDS)

    def view(buf: Any, dt: np.dtype, count: int | None, what: str) -> np.ndarray:
        mv = memoryview(buf)
        if count is not None and mv.nbytes != count * dt.itemsize or mv.nbytes % dt.itemsize:
            raise ProtocolError(f"events message: {what} has {mv.nbytes} bytes")
        return np.frombuffer(mv, dtype=dt)

    events = view(parts[0], ev_dtype, n, "the events table")
    seq = events["seq"]
    if int(seq[0]) != header["first"] or int(seq[-1]) != header["last"] or \
            (n > 1 and not bool(np.all(seq[1:] > seq[:-1]))):
        raise ProtocolError("events message: seqs do not match the header or are not increasing")
    out_parts = {m: view(parts[1 + i], dtype, n, f"part {m!r}") for i, m in enumerate(mods)}
    out_tables = {}
    for j, (name, columns) in enumerate(tables.items()):
        if not isinstance(name, str) or not name.isidentifier():
            raise ProtocolError(f"events message: bad table name {name!r}")
        out_tables[name] = view(parts[1 + len(mods) + j], _table_dtype(name, columns), None, f"table {name!r}")
        if len(out_tables[name]) and not np.isin(out_tables[name]["seq"], seq).all():
            raise ProtocolError(f"events message: table {name!r} has rows of events not in the message")
    return events, out_parts, out_tables
