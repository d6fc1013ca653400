"""Observation taps: the latest frames and histograms of a node, at a limited rate, for viewers.

A node that serves a tap owns one :class:`TapPublisher` (a ZeroMQ PUB socket with SNDHWM 2 and
LINGER 0).  Its data path asks :meth:`TapPublisher.due` (one clock read and one compare) and only
when that says yes takes a copy of the newest record (``Ring.latest()``) and publishes it.  A PUB
socket never waits for subscribers: a slow or absent viewer makes ZeroMQ drop tap messages at the
high-water mark, so looking at a run can never slow it down; the viewer just misses frames.

Wire format (multipart, all integers little-endian):

- ``[b"frame", header, ch0, ch1, ...]``: ``header`` is a msgpack map ``{stream, module, seq,
  timestamp, flags, channels: {name: dtype.str}, samples, meta}`` and one part per channel holds
  that channel's ``samples`` values (C-contiguous, dtype as named).  ``meta`` carries what an
  oscilloscope needs for physical axes: ``sample_ns`` (float), ``pretrigger`` (samples),
  ``volts_per_count`` ({channel: float or None}, or None: None for float channels already in
  volts), ``trigger_level`` (volts or None), ``trigger_channel`` (name or None).
- ``[b"hist", body]``: ``body`` is a msgpack list of maps ``{node, name, field, unit, edges,
  counts, underflow, overflow, entries}``; ``edges`` (float64) and ``counts`` (int64) are either
  lists or raw little-endian bytes (the publisher sends bytes).

:class:`TapReader` subscribes to any number of taps and decodes what arrives; a message that does
not follow this format is counted in ``rejected`` and skipped (viewers must survive anything).
"""
from __future__ import annotations

import math
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import msgpack
import numpy as np
import zmq

from coordinator.frames import channel_dtype, channel_names

__all__ = ["TapPublisher", "TapReader", "TapFormatError", "encode_frame", "encode_histograms", "decode",
           "TOPIC_FRAME", "TOPIC_HIST"]

TOPIC_FRAME = b"frame"
TOPIC_HIST = b"hist"
#: Largest frame a reader accepts (samples per channel); guards against absurd headers.
MAX_SAMPLES = 1 << 24
#: Largest histogram (bins) a reader accepts.
MAX_BINS = 1 << 20
_WILDCARDS = ("*", "0.0.0.0", "")


class TapFormatError(ValueError):
    """A tap message does not follow the tap wire format."""


def _plain(obj: Any) -> Any:
    """msgpack fallback: NumPy scalars and arrays in ``meta`` become plain Python values."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"cannot send {type(obj).__name__} in a tap message")


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True, default=_plain)


# -- encoding ---------------------------------------------------------------------------------

def encode_frame(stream: str, module: str, record: np.ndarray, meta: Mapping[str, Any]) -> list[bytes]:
    """The parts of a frame message for one record (0-d or 1-element array of a frame dtype)."""
    rec = np.asarray(record)
    if rec.size != 1 or rec.dtype.names is None:
        raise ValueError(f"expected one frame record, got shape {rec.shape} of {rec.dtype!r}")
    rec = rec.reshape(())
    names = channel_names(rec.dtype)
    samples = int(rec.dtype.fields[names[0]][0].shape[0]) if names else 0
    header = {"stream": str(stream), "module": str(module), "seq": int(rec["seq"]),
              "timestamp": int(rec["timestamp"]), "flags": int(rec["flags"]),
              "channels": {n: rec.dtype.fields[n][0].base.str for n in names},
              "samples": samples, "meta": dict(meta) if meta else {}}
    parts = [TOPIC_FRAME, _pack(header)]
    for n in names:
        parts.append(np.ascontiguousarray(rec[n]).tobytes())
    return parts


def _hist_entry(node: str, h: Mapping[str, Any]) -> dict:
    edges = np.ascontiguousarray(h["edges"], dtype="<f8")
    counts = np.ascontiguousarray(h["counts"], dtype="<i8")
    if edges.ndim != 1 or counts.ndim != 1 or len(edges) != len(counts) + 1:
        raise ValueError(f"histogram {h.get('name')!r}: need len(edges) == len(counts) + 1")
    return {"node": str(node), "name": str(h["name"]), "field": str(h.get("field", h["name"])),
            "unit": str(h.get("unit") or ""), "edges": edges.tobytes(), "counts": counts.tobytes(),
            "underflow": int(h.get("underflow", 0)), "overflow": int(h.get("overflow", 0)),
            "entries": int(h.get("entries", int(counts.sum())))}


def encode_histograms(node: str, hists: Iterable[Mapping[str, Any]]) -> list[bytes]:
    """The parts of a histogram message: every histogram of ``node`` in one message."""
    return [TOPIC_HIST, _pack([_hist_entry(node, h) for h in hists])]


# -- decoding ---------------------------------------------------------------------------------

def _unpack(raw: bytes) -> Any:
    try:
        return msgpack.unpackb(raw, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types
        raise TapFormatError(f"not msgpack ({type(exc).__name__})") from None


def _need(cond: bool, why: str) -> None:
    if not cond:
        raise TapFormatError(why)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _decode_frame(parts: Sequence[bytes]) -> dict:
    _need(len(parts) >= 2, "frame message without header")
    h = _unpack(parts[1])
    _need(isinstance(h, dict), "frame header is not a map")
    for key, typ in (("stream", str), ("module", str), ("channels", dict)):
        _need(isinstance(h.get(key), typ), f"frame header: {key} missing or not {typ.__name__}")
    for key in ("seq", "timestamp", "flags", "samples"):
        _need(_is_int(h.get(key)) and h[key] >= 0, f"frame header: {key} missing or not an integer >= 0")
    samples = h["samples"]
    _need(1 <= samples <= MAX_SAMPLES, f"frame header: samples={samples} out of range")
    meta = h.get("meta") or {}
    _need(isinstance(meta, dict), "frame header: meta is not a map")
    chans = h["channels"]
    _need(len(parts) == 2 + len(chans), f"frame: {len(chans)} channels but {len(parts) - 2} data parts")
    data: dict[str, np.ndarray] = {}
    for (name, spec), raw in zip(chans.items(), parts[2:]):
        _need(isinstance(name, str) and isinstance(spec, str), "frame header: bad channel entry")
        try:
            dt = channel_dtype(spec)
        except ValueError as exc:
            raise TapFormatError(f"channel {name!r}: {exc}") from None
        _need(len(raw) == samples * dt.itemsize,
              f"channel {name!r}: {len(raw)} bytes, expected {samples} x {dt.itemsize}")
        data[name] = np.frombuffer(raw, dt)
    return {"kind": "frame", "stream": h["stream"], "module": h["module"], "seq": h["seq"],
            "timestamp": h["timestamp"], "flags": h["flags"], "samples": samples, "meta": meta,
            "channels": data}


def _array(v: Any, dtype: str, what: str) -> np.ndarray:
    if isinstance(v, (bytes, bytearray)):
        _need(len(v) % 8 == 0, f"{what}: {len(v)} bytes is not a whole number of 8-byte values")
        return np.frombuffer(bytes(v), dtype)
    _need(isinstance(v, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v),
          f"{what}: not a list of numbers or bytes")
    try:
        return np.asarray(v, dtype)
    except (OverflowError, ValueError):
        raise TapFormatError(f"{what}: values out of range") from None


def _decode_hists(parts: Sequence[bytes]) -> list[dict]:
    _need(len(parts) == 2, f"hist message has {len(parts)} parts, expected 2")
    body = _unpack(parts[1])
    _need(isinstance(body, list), "hist body is not a list")
    out = []
    for h in body:
        _need(isinstance(h, dict), "histogram is not a map")
        for key in ("node", "name"):
            _need(isinstance(h.get(key), str), f"histogram: {key} missing or not text")
        for key in ("underflow", "overflow", "entries"):
            _need(_is_int(h.get(key, 0)), f"histogram {h['name']!r}: {key} is not an integer")
        edges = _array(h.get("edges"), "<f8", f"histogram {h['name']!r} edges")
        counts = _array(h.get("counts"), "<i8", f"histogram {h['name']!r} counts")
        _need(1 <= len(counts) <= MAX_BINS and len(edges) == len(counts) + 1,
              f"histogram {h['name']!r}: {len(edges)} edges for {len(counts)} bins")
        _need(bool(np.all(np.isfinite(edges))) and bool(np.all(np.diff(edges) > 0)),
              f"histogram {h['name']!r}: edges not finite and increasing")
        out.append({"kind": "hist", "node": h["node"], "name": h["name"], "field": str(h.get("field") or h["name"]),
                    "unit": str(h.get("unit") or ""), "edges": edges, "counts": counts,
                    "underflow": h.get("underflow", 0), "overflow": h.get("overflow", 0),
                    "entries": h.get("entries", int(counts.sum()))})
    return out


def decode(parts: Sequence[bytes]) -> list[dict]:
    """Decode one multipart tap message into message dicts (one per frame or histogram);
    raise TapFormatError with the reason if it is not a tap message."""
    _need(len(parts) >= 1, "empty message")
    topic = bytes(parts[0])
    if topic == TOPIC_FRAME:
        return [_decode_frame(parts)]
    if topic == TOPIC_HIST:
        return _decode_hists(parts)
    raise TapFormatError(f"unknown topic {topic[:20]!r}")


# -- sockets ----------------------------------------------------------------------------------

class TapPublisher:
    """The publishing end of a node's tap; nothing it does can block the caller."""

    def __init__(self, ctx: zmq.Context, address: str, max_rate: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """Bind a PUB socket to a random port on ``address``; ``max_rate``: messages per second
        per key that :meth:`due` lets through; ``clock`` is injectable for tests."""
        if not max_rate > 0 or math.isinf(max_rate):
            raise ValueError(f"max_rate must be a positive finite rate, not {max_rate!r}")
        self.max_rate = float(max_rate)
        self._interval = 1.0 / self.max_rate
        self._clock = clock
        self._next: dict[str, float] = {}
        self.sent = 0
        self.dropped = 0
        self._sock = ctx.socket(zmq.PUB)
        try:
            self._sock.setsockopt(zmq.SNDHWM, 2)
            self._sock.setsockopt(zmq.LINGER, 0)
            port = self._sock.bind_to_random_port(f"tcp://{address}")
        except BaseException:
            self._sock.close(0)
            raise
        host = socket.gethostname() if address in _WILDCARDS else address
        #: Where a viewer connects (a wildcard bind is named by this host's name).
        self.endpoint = f"tcp://{host}:{port}"

    def due(self, key: str) -> bool:
        """True at most ``max_rate`` times per second per key: the data path asks this before
        doing any tap work, so an undue frame costs one clock read and one compare."""
        now = self._clock()
        if now < self._next.get(key, -math.inf):
            return False
        self._next[key] = now + self._interval
        return True

    def _send(self, parts: list[bytes]) -> bool:
        if self._sock is None:
            return False
        try:
            self._sock.send_multipart(parts, flags=zmq.NOBLOCK, copy=True)
        except zmq.Again:
            self.dropped += 1
            return False
        self.sent += 1
        return True

    def publish_frame(self, stream: str, module: str, record: np.ndarray, meta: dict) -> bool:
        """Publish one frame record (a copy, e.g. from ``Ring.latest()``); never blocks.
        Returns False if the message was dropped (or the tap is closed)."""
        return self._send(encode_frame(stream, module, record, meta))

    def publish_histograms(self, node: str, hists: list[dict]) -> bool:
        """Publish a node's histograms (dicts with name, field, unit, edges, counts, underflow,
        overflow, entries) in one message; never blocks.  Returns False if dropped."""
        return self._send(encode_histograms(node, hists))

    def close(self) -> None:
        """Close the socket (LINGER 0: unsent tap messages are discarded); idempotent."""
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None

    def __enter__(self) -> "TapPublisher":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TapReader:
    """Subscribes to taps and returns decoded messages; never raises on what peers send."""

    def __init__(self, endpoints: Sequence[str], ctx: zmq.Context | None = None) -> None:
        """Connect a SUB socket to every endpoint (ZeroMQ reconnects by itself when a node
        comes later or restarts).  Without ``ctx`` the reader owns a context of its own."""
        self._own_ctx = ctx is None
        self._ctx = zmq.Context() if ctx is None else ctx
        self.endpoints = list(endpoints)
        self.rejected = 0
        self.received = 0
        self.last_error = ""
        self._sock: zmq.Socket | None = self._ctx.socket(zmq.SUB)
        try:
            self._sock.setsockopt(zmq.LINGER, 0)
            self._sock.setsockopt(zmq.RCVHWM, 64)      # only the latest matters
            self._sock.setsockopt(zmq.MAXMSGSIZE, 1 << 30)
            self._sock.setsockopt(zmq.SUBSCRIBE, b"")  # unknown topics are counted as rejected
            for ep in self.endpoints:
                self._sock.connect(ep)
        except BaseException:
            self.close()
            raise

    def poll(self, timeout_ms: int, max_messages: int = 1000) -> list[dict]:
        """Wait up to ``timeout_ms`` for the first message, then take whatever else is queued
        (at most ``max_messages``) without waiting; returns decoded message dicts."""
        out: list[dict] = []
        sock = self._sock
        if sock is None or not sock.poll(max(0, int(timeout_ms)), zmq.POLLIN):
            return out
        for _ in range(max_messages):
            try:
                parts = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            try:
                out.extend(decode(parts))
                self.received += 1
            except Exception as exc:  # TapFormatError, or anything odd a decoder hits: skip it
                self.rejected += 1
                self.last_error = str(exc)
        return out

    def close(self) -> None:
        """Close the socket (and the context if the reader made it); idempotent."""
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None
        if self._own_ctx and self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    def __enter__(self) -> "TapReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
