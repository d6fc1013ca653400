"""`daq-coordinator view`: a live oscilloscope and live histograms in a web page, fed by taps.

The viewer subscribes to the taps of a run (coordinator/tap.py), keeps only the latest frame
per (stream, module) and the latest histogram per (node, name) (:class:`LiveState`), and serves
a self-contained page (plain JS on <canvas>, no CDN, no libraries) that polls ``data.json``.
A web page because every lab PC has a browser, it works over ``ssh -L`` from another PC, and
several people can look at once while the viewer reads the taps only once.

Waveforms are converted to volts and decimated here, on request, at most once per new tap
message however many browsers poll (the JSON is cached per state version): the page only draws.
"""
from __future__ import annotations

import http.server
import json
import math
import signal
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from coordinator.tap import TapReader

__all__ = ["LiveState", "ViewServer", "ViewError", "find_taps", "main", "MAX_POINTS", "PAGE"]

#: Most points per trace sent to the page (min/max pairs of buckets beyond this).
MAX_POINTS = 2000
#: A stream whose newest frame is older than this (s) is shown as stale on the page.
STALE_S = 5.0


class ViewError(Exception):
    """The view cannot start: the message says why and what to do."""


# -- state ------------------------------------------------------------------------------------

def _num(v: Any, default: float | None) -> float | None:
    """A finite float from a peer's meta value, else ``default`` (a tap never breaks the view)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return default
    return float(v)


def _decimate(y: np.ndarray, max_points: int) -> np.ndarray:
    """Indices of the samples to draw: all of them if few enough, else the minimum and maximum
    of each of max_points/2 buckets in time order, so narrow pulses and their peaks survive
    (a stride would skip them)."""
    n = len(y)
    if n <= max_points:
        return np.arange(n)
    buckets = max(1, max_points // 2)
    size = -(-n // buckets)
    nb = -(-n // size)
    padded = np.pad(y, (0, nb * size - n), mode="edge").reshape(nb, size)
    base = np.arange(nb) * size
    lo = np.minimum(padded.argmin(axis=1) + base, n - 1)
    hi = np.minimum(padded.argmax(axis=1) + base, n - 1)
    return np.stack([np.minimum(lo, hi), np.maximum(lo, hi)], axis=1).reshape(-1)


def _rounded(v: np.ndarray) -> list[float]:
    """Values rounded to ~7 significant digits of the trace's range: short JSON, no visible loss;
    non-finite values become None."""
    if not len(v):
        return []
    finite = np.isfinite(v)
    top = float(np.max(np.abs(v[finite]))) if finite.any() else 0.0
    digits = 7 - int(math.floor(math.log10(top))) if top > 0 else 7
    out = np.round(v, min(max(digits, 0), 15)).tolist()
    if not finite.all():  # NaN/inf from a float channel: a gap in the trace (JSON has no NaN)
        for i in np.flatnonzero(~finite):
            out[i] = None
    return out


class LiveState:
    """The latest frame per (stream, module) and histogram per (node, name), and their JSON form."""

    def __init__(self, max_points: int = MAX_POINTS) -> None:
        self.max_points = max(2, int(max_points))
        self.frames: dict[tuple[str, str], dict] = {}
        self.hists: dict[tuple[str, str], dict] = {}
        self.frames_seen = 0
        self.hists_seen = 0
        #: Grows with every update: lets a server reuse a snapshot while nothing changed.
        self.version = 0

    def update(self, messages: Iterable[dict]) -> None:
        """Keep the newest of each kind of message (older ones are simply replaced)."""
        now = time.time()
        for m in messages:
            kind = m.get("kind")
            if kind == "frame":
                self.frames[(m["stream"], m["module"])] = dict(m, received=now)
                self.frames_seen += 1
            elif kind == "hist":
                self.hists[(m["node"], m["name"])] = dict(m, received=now)
                self.hists_seen += 1
            else:
                continue
            self.version += 1

    def _traces(self, m: dict, now: float) -> list[dict]:
        meta = m.get("meta") or {}
        sample_ns = _num(meta.get("sample_ns"), None)
        time_unit = "ns"
        if sample_ns is None or sample_ns <= 0:
            sample_ns, time_unit = 1.0, "samples"
        pre = _num(meta.get("pretrigger"), 0.0) or 0.0
        vpc = meta.get("volts_per_count")
        trig = _num(meta.get("trigger_level"), None)
        out = []
        for name, data in m["channels"].items():
            scale = _num(vpc.get(name), None) if isinstance(vpc, dict) else None
            y = np.asarray(data, np.float64)
            if scale is not None:
                y = y * scale
                unit = "V"
            else:
                unit = "V" if data.dtype.kind == "f" else "counts"
            idx = _decimate(y, self.max_points)
            t = (idx - pre) * sample_ns
            out.append({"module": m["module"], "channel": name, "label": f"{m['module']} {name}",
                        "seq": m["seq"], "timestamp": m["timestamp"], "flags": m["flags"],
                        "samples": len(y), "points": len(idx),
                        "decimation": "minmax" if len(idx) < len(y) else "none",
                        "unit": unit, "time_unit": time_unit, "trigger_level": trig,
                        "age_s": round(now - m["received"], 3),
                        "t": _rounded(t), "v": _rounded(y[idx])})
        return out

    def _streams(self, now: float) -> list[dict]:
        by_stream: dict[str, list[dict]] = {}
        for (stream, _module), m in sorted(self.frames.items()):
            by_stream.setdefault(stream, []).append(m)
        out = []
        for stream, msgs in by_stream.items():
            traces = [tr for m in msgs for tr in self._traces(m, now)]
            metas = [m.get("meta") or {} for m in msgs]
            level = next((_num(x.get("trigger_level"), None) for x in metas
                          if _num(x.get("trigger_level"), None) is not None), None)
            chan = next((x["trigger_channel"] for x in metas if isinstance(x.get("trigger_channel"), str)), None)
            units = {tr["unit"] for tr in traces}
            out.append({"name": stream, "traces": traces, "trigger_level": level, "trigger_channel": chan,
                        "unit": units.pop() if len(units) == 1 else "V / counts",
                        "time_unit": traces[0]["time_unit"] if traces else "ns",
                        "age_s": min(tr["age_s"] for tr in traces) if traces else None})
        return out

    def _histograms(self, now: float) -> list[dict]:
        out: dict[str, dict] = {}
        for (node, name), h in sorted(self.hists.items()):
            key = name
            acc = out.get(key)
            if acc is not None and not np.array_equal(acc["_edges"], h["edges"]):
                key = f"{name}@{node}"      # same name, other binning: shown on its own
                acc = out.get(key)
            if acc is None:
                out[key] = {"name": key, "field": h["field"], "unit": h["unit"], "nodes": [node],
                            "_edges": h["edges"], "_counts": np.array(h["counts"], np.int64),
                            "underflow": int(h["underflow"]), "overflow": int(h["overflow"]),
                            "entries": int(h["entries"]), "age_s": round(now - h["received"], 3)}
                continue
            acc["nodes"].append(node)
            acc["_counts"] = acc["_counts"] + h["counts"]
            acc["underflow"] += int(h["underflow"])
            acc["overflow"] += int(h["overflow"])
            acc["entries"] += int(h["entries"])
            acc["age_s"] = min(acc["age_s"], round(now - h["received"], 3))
        result = []
        for acc in out.values():
            acc["edges"] = acc.pop("_edges").tolist()
            acc["counts"] = acc.pop("_counts").tolist()
            result.append(acc)
        return result

    def snapshot(self) -> dict:
        """Everything the page draws, JSON-able: per stream the traces in volts (``v``) against
        time in ns from the trigger (``t``: sample i at (i - pretrigger) * sample_ns), decimated
        to at most ``max_points`` by min/max pairs (``decimation``: "minmax" or "none"), the
        trigger level; histograms summed over nodes by name (same edges)."""
        now = time.time()
        return {"now": now, "frames_seen": self.frames_seen, "hists_seen": self.hists_seen,
                "max_points": self.max_points, "streams": self._streams(now),
                "histograms": self._histograms(now)}


# -- finding the taps -------------------------------------------------------------------------

def _check_endpoint(ep: str, where: str) -> str:
    u = urlsplit(ep)
    try:
        ok = u.scheme == "tcp" and bool(u.hostname) and u.port is not None and not u.path
    except ValueError:  # port out of range or not a number
        ok = False
    if not ok:
        raise ViewError(f"{where}: {ep!r} is not a tap endpoint like tcp://HOST:PORT")
    return ep


def find_taps(target: str) -> list[str]:
    """Tap endpoints of ``target``: a run directory holding ``live.json`` (``{"taps": {node:
    endpoint}, ...}``, written by the coordinator while the run is live), that ``live.json``
    itself, a runs folder (its newest live run: no need to know the run's number), or a
    comma-separated list of ``tcp://HOST:PORT`` endpoints."""
    text = str(target).strip()
    if text.startswith("tcp://"):
        eps = [p.strip() for p in text.split(",") if p.strip()]
        return [_check_endpoint(ep, "endpoint list") for ep in eps]
    path = Path(text)
    live = path / "live.json" if path.is_dir() else path
    if path.is_dir() and not live.exists():
        runs = sorted(path.glob("*/live.json"), key=lambda p: p.stat().st_mtime)
        if not runs:
            raise ViewError(f"{path} has no live.json, nor a run directory with one: no run is live there "
                            "(the coordinator writes live.json while a run is live)")
        live = runs[-1]
    if not live.exists():
        raise ViewError(f"{text}: no such run directory, and not a list of tcp://HOST:PORT endpoints")
    if not live.is_file():
        raise ViewError(f"{live} is not a file")
    try:
        doc = json.loads(live.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ViewError(f"{live}: cannot read it as JSON ({exc})") from None
    taps = doc.get("taps") if isinstance(doc, dict) else None
    if not isinstance(taps, dict) or not taps:
        raise ViewError(f"{live}: no taps in it (expected {{\"taps\": {{node: \"tcp://HOST:PORT\"}}}})")
    out = []
    for node, ep in taps.items():
        if not isinstance(ep, str):
            raise ViewError(f"{live}: tap of node {node!r} is not text: {ep!r}")
        out.append(_check_endpoint(ep, f"{live}, node {node!r}"))
    return out


# -- the server -------------------------------------------------------------------------------

class ViewServer:
    """Reads taps on a background thread and serves the page, ``data.json`` and ``healthz``."""

    def __init__(self, taps: list[str], host: str = "127.0.0.1", port: int = 0, refresh: float = 0.5) -> None:
        """Connect to ``taps`` and bind the HTTP server (``port`` 0: any free port, see ``url``);
        ``refresh``: seconds between the page's polls."""
        self.taps = list(taps)
        self.refresh = max(0.05, float(refresh))
        self.state = LiveState()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._closed = False
        self._serving = False
        self._cache: tuple[int, bytes] | None = None
        self._reader = TapReader(self.taps)
        self._threads: list[threading.Thread] = []
        try:
            self._httpd = http.server.ThreadingHTTPServer((host, int(port)), self._handler_class())
        except BaseException:
            self._reader.close()
            raise
        self._httpd.daemon_threads = True
        bound_port = self._httpd.server_address[1]
        shown = "127.0.0.1" if host in ("", "0.0.0.0") else host
        shown = f"[{shown}]" if ":" in shown else shown
        #: Where a browser on this machine opens the view.
        self.url = f"http://{shown}:{bound_port}/"
        self.port = bound_port
        self._page = PAGE.replace("__REFRESH_MS__", str(int(self.refresh * 1000))).encode()

    # -- data -------------------------------------------------------------------------------

    def _read_taps(self) -> None:
        while not self._stop.is_set():
            msgs = self._reader.poll(100)
            if msgs:
                with self._lock:
                    self.state.update(msgs)

    def data_json(self) -> bytes:
        """The snapshot as JSON, computed at most once per state version (many viewers, one cost)."""
        with self._lock:
            version = self.state.version
            if self._cache is not None and self._cache[0] == version:
                return self._cache[1]
            snap = self.state.snapshot()
            snap["taps"] = self.taps
            snap["rejected"] = self._reader.rejected
            snap["refresh_s"] = self.refresh
            body = json.dumps(snap, separators=(",", ":"), allow_nan=False).encode()
            self._cache = (version, body)
            return body

    def health_json(self) -> bytes:
        """Liveness for scripts: frames and histograms seen so far, taps, rejected messages."""
        with self._lock:
            doc = {"ok": not self._closed, "frames_seen": self.state.frames_seen,
                   "hists_seen": self.state.hists_seen, "rejected": self._reader.rejected, "taps": self.taps}
        return json.dumps(doc).encode()

    def _handler_class(self) -> type[http.server.BaseHTTPRequestHandler]:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            server_version = "daq-view/1"
            timeout = 10  # a stuck client must not hold a thread for ever

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                path = urlsplit(self.path).path
                if path in ("/", "/index.html"):
                    self._send(200, "text/html; charset=utf-8", server._page)
                elif path == "/data.json":
                    self._send(200, "application/json", server.data_json())
                elif path == "/healthz":
                    self._send(200, "application/json", server.health_json())
                else:
                    self._send(404, "text/plain; charset=utf-8", b"not found\n")

            def _send(self, code: int, ctype: str, body: bytes) -> None:
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(body)))
                    self.send_header("Cache-Control", "no-store")
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the browser went away mid-answer

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass  # one line per poll of every viewer would drown the terminal

        return Handler

    # -- lifetime ---------------------------------------------------------------------------

    def _start_reader(self) -> None:
        t = threading.Thread(target=self._read_taps, name="view-taps", daemon=True)
        self._threads.append(t)
        t.start()

    def serve_forever(self) -> None:
        """Read the taps and serve HTTP in this thread until :meth:`close` (from another thread)
        or KeyboardInterrupt."""
        with self._lock:
            if self._closed or self._serving:
                raise RuntimeError("ViewServer is closed or already serving")
            self._serving = True
            self._start_reader()
        try:
            self._httpd.serve_forever(poll_interval=0.2)
        finally:
            with self._lock:
                self._serving = False

    def start(self) -> "ViewServer":
        """Serve on background threads (returns at once); :meth:`close` stops them."""
        with self._lock:
            if self._closed or self._serving:
                raise RuntimeError("ViewServer is closed or already serving")
            self._serving = True
            self._start_reader()
        t = threading.Thread(target=self._serve_thread, name="view-http", daemon=True)
        self._threads.append(t)
        t.start()
        return self

    def _serve_thread(self) -> None:
        try:
            self._httpd.serve_forever(poll_interval=0.2)
        finally:
            with self._lock:
                self._serving = False

    def close(self) -> None:
        """Stop the threads, close the HTTP and tap sockets, join; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            serving = self._serving
        self._stop.set()
        if serving and threading.current_thread() not in self._threads:
            self._httpd.shutdown()      # returns once serve_forever has left its loop
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout=5)
        self._httpd.server_close()
        self._reader.close()

    def __enter__(self) -> "ViewServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def main(target: str, port: int, open_browser: bool) -> int:
    """The `view` command: serve the live view of ``target`` until Ctrl-C; 0, or 2 with a message."""
    try:
        taps = find_taps(target)
    except ViewError as exc:
        print(f"daq-coordinator view: {exc}", file=sys.stderr)
        return 2
    try:
        server = ViewServer(taps, port=port)
    except OSError as exc:
        print(f"daq-coordinator view: cannot serve on port {port}: {exc}", file=sys.stderr)
        return 2
    print(f"live view of {target} ({len(taps)} tap{'s' if len(taps) != 1 else ''}): {server.url}"
          "   (Ctrl-C stops)", file=sys.stderr, flush=True)
    old = None
    if threading.current_thread() is threading.main_thread():
        def _term(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt
        old = signal.signal(signal.SIGTERM, _term)
    try:
        if open_browser:
            try:
                import webbrowser
                webbrowser.open(server.url)
            except Exception as exc:  # no browser here (e.g. over ssh): the URL is printed anyway
                print(f"daq-coordinator view: cannot open a browser ({exc})", file=sys.stderr)
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
        if old is not None:
            signal.signal(signal.SIGTERM, old)
    return 0


# -- the page ---------------------------------------------------------------------------------

PAGE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>DAQ live view</title>
<style>
  body { margin: 0; padding: 12px 18px; background: #fafafa; color: #222;
         font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
  h1 { font-size: 18px; margin: 0 0 4px 0; }
  h2 { font-size: 15px; margin: 14px 0 4px 0; }
  #status { color: #444; margin-bottom: 8px; }
  #status.stale, #status.error { color: #a00; font-weight: 600; }
  #waiting { font-size: 20px; color: #555; padding: 40px 0; }
  .panel { background: #fff; border: 1px solid #ccc; border-radius: 4px; padding: 6px 8px; margin-bottom: 10px; }
  .panel canvas { display: block; width: 100%; }
  .info { color: #555; font-size: 13px; }
  #hists { display: grid; grid-template-columns: repeat(auto-fill, minmax(520px, 1fr)); gap: 10px; }
  label { font-size: 13px; color: #333; }
</style>
</head>
<body>
<h1>DAQ live view</h1>
<div id="status">connecting&hellip;</div>
<div id="waiting">waiting for data</div>
<div id="scopes"></div>
<div id="hists"></div>
<script>
"use strict";
const REFRESH_MS = __REFRESH_MS__;
const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
const HIST_LINE = "#2ca02c", HIST_FILL = "rgba(44,160,44,0.25)";
const logY = {};
const panels = {};
const FONT = "12px system-ui, 'DejaVu Sans', sans-serif";

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const k in (attrs || {})) e.setAttribute(k, attrs[k]);
  if (text !== undefined) e.textContent = text;
  return e;
}

function niceStep(span, n) {
  const raw = span / Math.max(1, n);
  const p = Math.pow(10, Math.floor(Math.log10(raw)));
  const f = raw / p;
  return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * p;
}
function ticks(lo, hi, n) {
  const s = niceStep(hi - lo, n), out = [];
  for (let v = Math.ceil(lo / s) * s; v <= hi + s * 1e-9 && out.length < 60; v += s)
    out.push(Math.abs(v) < s * 1e-9 ? 0 : v);
  return {step: s, values: out};
}
function fmt(v, step) {
  if (v !== 0 && (Math.abs(v) >= 1e6 || Math.abs(v) < 1e-4)) return v.toExponential(1);
  const d = Math.max(0, Math.min(8, -Math.floor(Math.log10(step) + 1e-9)));
  return v.toFixed(d);
}
function fmtV(v) {
  const a = Math.abs(v);
  if (a !== 0 && a < 1) return (v * 1000).toPrecision(3) + " mV";
  return v.toPrecision(3) + " V";
}

// Size the canvas backing store for the screen (sharp on HiDPI); returns context and CSS size.
function prep(canvas, cssH) {
  const dpr = window.devicePixelRatio || 1;
  const w = Math.max(200, canvas.clientWidth || canvas.parentNode.clientWidth || 800);
  canvas.style.height = cssH + "px";
  canvas.width = Math.round(w * dpr);
  canvas.height = Math.round(cssH * dpr);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, w, cssH);
  ctx.font = FONT;
  return {ctx: ctx, w: w, h: cssH};
}

// Frame, grid, ticks and labels; returns the mapping from data to pixels.
function axes(ctx, box, x0, x1, y0, y1, xlabel, ylabel, yTicks, xfmt, yfmt) {
  const sx = (box.r - box.l) / (x1 - x0), sy = (box.b - box.t) / (y1 - y0);
  const X = x => box.l + (x - x0) * sx, Y = y => box.b - (y - y0) * sy;
  const xt = ticks(x0, x1, Math.max(2, Math.floor((box.r - box.l) / 90)));
  ctx.strokeStyle = "#e4e4e4"; ctx.lineWidth = 1; ctx.fillStyle = "#222";
  ctx.textAlign = "center"; ctx.textBaseline = "top";
  for (const v of xt.values) {
    const px = Math.round(X(v)) + 0.5;
    ctx.beginPath(); ctx.moveTo(px, box.t); ctx.lineTo(px, box.b); ctx.stroke();
    ctx.fillText(xfmt ? xfmt(v, xt.step) : fmt(v, xt.step), px, box.b + 5);
  }
  ctx.textAlign = "right"; ctx.textBaseline = "middle";
  for (const t of yTicks) {
    const py = Math.round(Y(t.v)) + 0.5;
    ctx.beginPath(); ctx.moveTo(box.l, py); ctx.lineTo(box.r, py); ctx.stroke();
    ctx.fillText(t.label, box.l - 6, py);
  }
  ctx.strokeStyle = "#333";
  ctx.strokeRect(box.l + 0.5, box.t + 0.5, box.r - box.l, box.b - box.t);
  ctx.textAlign = "center"; ctx.textBaseline = "bottom";
  ctx.fillText(xlabel, (box.l + box.r) / 2, box.b + 38);
  ctx.save(); ctx.translate(14, (box.t + box.b) / 2); ctx.rotate(-Math.PI / 2);
  ctx.textBaseline = "top"; ctx.fillText(ylabel, 0, 0); ctx.restore();
  return {X: X, Y: Y};
}

function linTicks(lo, hi, n) {
  const t = ticks(lo, hi, n);
  return t.values.map(v => ({v: v, label: fmt(v, t.step)}));
}

function drawScope(canvas, s) {
  const g = prep(canvas, 380), ctx = g.ctx;
  let t0 = Infinity, t1 = -Infinity, v0 = Infinity, v1 = -Infinity;
  for (const tr of s.traces) {
    for (let i = 0; i < tr.t.length; i++) {
      const t = tr.t[i], v = tr.v[i];
      if (t === null || v === null) continue;
      if (t < t0) t0 = t; if (t > t1) t1 = t;
      if (v < v0) v0 = v; if (v > v1) v1 = v;
    }
  }
  if (!isFinite(t0)) { t0 = -1; t1 = 1; v0 = -1; v1 = 1; }
  const trig = s.trigger_level;
  if (trig !== null && trig !== undefined) { v0 = Math.min(v0, trig); v1 = Math.max(v1, trig); }
  if (t1 <= t0) t1 = t0 + 1;
  if (v1 - v0 < 1e-6) { v0 -= 1e-3; v1 += 1e-3; }
  const pad = 0.06 * (v1 - v0); v0 -= pad; v1 += pad;
  const tu = s.time_unit || "ns";
  const us = tu === "ns" && (t1 - t0) > 20000, k = us ? 1e-3 : 1;
  const xlabel = tu === "ns" ? (us ? "time from trigger (\u00b5s)" : "time from trigger (ns)") : "sample from trigger";
  const box = {l: 72, r: g.w - 14, t: 12, b: g.h - 46};
  const m = axes(ctx, box, t0 * k, t1 * k, v0, v1, xlabel,
                 s.unit === "V" ? "voltage (V)" : "value (" + s.unit + ")",
                 linTicks(v0, v1, Math.max(2, Math.floor((box.b - box.t) / 45))));
  ctx.save();
  ctx.beginPath(); ctx.rect(box.l, box.t, box.r - box.l, box.b - box.t); ctx.clip();
  if (t0 <= 0 && t1 >= 0) {                      // the trigger instant
    ctx.strokeStyle = "#888"; ctx.lineWidth = 1;
    const px = Math.round(m.X(0)) + 0.5;
    ctx.beginPath(); ctx.moveTo(px, box.t); ctx.lineTo(px, box.b); ctx.stroke();
  }
  s.traces.forEach((tr, j) => {
    ctx.strokeStyle = COLORS[j % COLORS.length]; ctx.lineWidth = 2; ctx.lineJoin = "round";
    ctx.beginPath();
    let pen = false;
    for (let i = 0; i < tr.t.length; i++) {
      if (tr.t[i] === null || tr.v[i] === null) { pen = false; continue; }
      const x = m.X(tr.t[i] * k), y = m.Y(tr.v[i]);
      if (pen) ctx.lineTo(x, y); else ctx.moveTo(x, y);
      pen = true;
    }
    ctx.stroke();
  });
  if (trig !== null && trig !== undefined) {     // the trigger level, dashed
    ctx.strokeStyle = "#222"; ctx.lineWidth = 1.2; ctx.setLineDash([7, 5]);
    const py = Math.round(m.Y(trig)) + 0.5;
    ctx.beginPath(); ctx.moveTo(box.l, py); ctx.lineTo(box.r, py); ctx.stroke();
    ctx.setLineDash([]);
    ctx.fillStyle = "#222"; ctx.textAlign = "right"; ctx.textBaseline = "bottom";
    ctx.fillText("trigger " + fmtV(trig) + (s.trigger_channel ? " (" + s.trigger_channel + ")" : ""),
                 box.r - 6, py - 3);
  }
  ctx.restore();
  // legend, top right
  const rows = s.traces.map((tr, j) => ({c: COLORS[j % COLORS.length],
    text: tr.label + (tr.unit !== "V" ? " [" + tr.unit + "]" : "") + "  #" + tr.seq}));
  let lw = 0;
  for (const r of rows) lw = Math.max(lw, ctx.measureText(r.text).width);
  const lx = box.r - lw - 44, ly = box.t + 8;
  ctx.fillStyle = "rgba(255,255,255,0.85)"; ctx.strokeStyle = "#bbb"; ctx.lineWidth = 1;
  ctx.fillRect(lx - 6, ly - 4, lw + 44, rows.length * 17 + 6);
  ctx.strokeRect(lx - 6 + 0.5, ly - 4 + 0.5, lw + 44, rows.length * 17 + 6);
  rows.forEach((r, j) => {
    const y = ly + j * 17 + 8;
    ctx.strokeStyle = r.c; ctx.lineWidth = 2;
    ctx.beginPath(); ctx.moveTo(lx, y); ctx.lineTo(lx + 24, y); ctx.stroke();
    ctx.fillStyle = "#222"; ctx.textAlign = "left"; ctx.textBaseline = "middle";
    ctx.fillText(r.text, lx + 30, y);
  });
}

function drawHist(canvas, h, log) {
  const g = prep(canvas, 300), ctx = g.ctx;
  const e = h.edges, c = h.counts, n = c.length;
  let cmax = 0;
  for (const v of c) if (v > cmax) cmax = v;
  let y0, y1, yTicks, Yv;
  if (log) {
    y0 = -0.3; y1 = Math.log10(Math.max(1, cmax)) + 0.3;
    yTicks = [];
    for (let p = 0; p <= Math.ceil(y1) && yTicks.length < 20; p++)
      if (p >= y0 && p <= y1) yTicks.push({v: p, label: p < 4 ? String(Math.pow(10, p)) : "1e" + p});
    Yv = v => (v > 0 ? Math.log10(v) : y0);
  } else {
    y0 = 0; y1 = Math.max(1, cmax) * 1.08;
    yTicks = linTicks(y0, y1, 5).map(t => ({v: t.v, label: t.v >= 1e5 ? t.v.toExponential(1) : String(Math.round(t.v))}));
    Yv = v => v;
  }
  const box = {l: 72, r: g.w - 14, t: 12, b: g.h - 46};
  const xlabel = h.field + (h.unit ? " (" + h.unit + ")" : "");
  const m = axes(ctx, box, e[0], e[n], y0, y1, xlabel, "counts", yTicks);
  ctx.save();
  ctx.beginPath(); ctx.rect(box.l, box.t, box.r - box.l, box.b - box.t); ctx.clip();
  const base = m.Y(y0);
  ctx.beginPath(); ctx.moveTo(m.X(e[0]), base);
  for (let i = 0; i < n; i++) {
    const y = m.Y(Yv(c[i]));
    ctx.lineTo(m.X(e[i]), y); ctx.lineTo(m.X(e[i + 1]), y);
  }
  ctx.lineTo(m.X(e[n]), base); ctx.closePath();
  ctx.fillStyle = HIST_FILL; ctx.fill();
  ctx.strokeStyle = HIST_LINE; ctx.lineWidth = 1.5; ctx.stroke();
  ctx.restore();
}

function scopePanel(s) {
  const key = "scope-" + s.name;
  if (!panels[key]) {
    const div = el("div", {"class": "panel"});
    div.appendChild(el("h2", {}, "Oscilloscope \u2014 stream " + s.name));
    const info = el("div", {"class": "info"});
    const canvas = el("canvas", {id: key});
    div.appendChild(info); div.appendChild(canvas);
    document.getElementById("scopes").appendChild(div);
    panels[key] = {canvas: canvas, info: info};
  }
  return panels[key];
}

function histPanel(h) {
  const key = "hist-" + h.name;
  if (!panels[key]) {
    const div = el("div", {"class": "panel"});
    div.appendChild(el("h2", {}, "Histogram " + h.name));
    const info = el("div", {"class": "info"});
    const lab = el("label");
    const box = el("input", {type: "checkbox"});
    box.addEventListener("change", () => { logY[h.name] = box.checked; if (last) render(last); });
    lab.appendChild(box); lab.appendChild(document.createTextNode(" log y"));
    const canvas = el("canvas", {id: key});
    div.appendChild(info); div.appendChild(lab); div.appendChild(canvas);
    document.getElementById("hists").appendChild(div);
    panels[key] = {canvas: canvas, info: info};
  }
  return panels[key];
}

let last = null;
function render(d) {
  last = d;
  const status = document.getElementById("status");
  const waiting = document.getElementById("waiting");
  const nt = d.taps.length;
  let msg = nt + " tap" + (nt === 1 ? "" : "s") + ", " + d.frames_seen + " frames and " + d.hists_seen +
            " histogram updates received" + (d.rejected ? ", " + d.rejected + " bad messages" : "");
  let stale = false;
  for (const s of d.streams) {
    if (s.age_s !== null && s.age_s > 5) { stale = true; msg += " \u2014 stream " + s.name +
      ": last frame " + Math.round(s.age_s) + " s ago (run ended or paused?)"; }
  }
  status.textContent = msg;
  status.className = stale ? "stale" : "";
  waiting.style.display = d.streams.length ? "none" : "block";
  for (const s of d.streams) {
    const p = scopePanel(s);
    const tr = s.traces[0];
    p.info.textContent = s.traces.length + " trace" + (s.traces.length === 1 ? "" : "s") +
      (tr ? ", " + tr.samples + " samples" + (tr.decimation === "minmax" ?
        " (drawn as min/max of " + tr.points / 2 + " bins)" : "") : "");
    drawScope(p.canvas, s);
  }
  for (const h of d.histograms) {
    const p = histPanel(h);
    p.info.textContent = h.entries + " entries, underflow " + h.underflow + ", overflow " + h.overflow +
      " \u2014 node" + (h.nodes.length === 1 ? " " : "s ") + h.nodes.join(", ");
    drawHist(p.canvas, h, !!logY[h.name]);
  }
}

async function tick() {
  try {
    const r = await fetch("data.json", {cache: "no-store"});
    if (!r.ok) throw new Error("HTTP " + r.status);
    render(await r.json());
  } catch (err) {
    const status = document.getElementById("status");
    status.textContent = "cannot reach the viewer (" + err.message + "); retrying";
    status.className = "error";
  }
  setTimeout(tick, REFRESH_MS);
}
window.addEventListener("resize", () => { if (last) render(last); });
tick();
</script>
</body>
</html>
"""
