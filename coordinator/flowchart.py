"""The run's data flow as a picture: `data_flow.svg` (sources -> acquisition -> processing -> files).

Why: a topology says who sends what to whom only implicitly (streams, modules, dispatch,
`forward` stages, hosts).  One drawing shows at a glance where every frame goes, which host
does what and which files a run leaves, as mimoCoRB2's data_flow diagrams do.  The layout is
computed here and written as plain SVG text, so no graphviz (or other dependency) is needed
on the machines that run the coordinator.

Ids for tests and tools: every acquisition and processing node is a `<g id="node-<name>">`;
every edge is a `<path class="edge" data-from=... data-to=...>` naming node names, or
`source:<acq>` for a node's source and `file:<file name>` for an output file.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from coordinator.topology.model import EMULATOR, Topology

FONT, LINE, PAD = 13, 17, 8                # px: text size, line height, box padding
GAP_X, GAP_Y, MARGIN, TOP = 140, 16, 20, 50
CHAR = 0.6                                   # em: a generous average glyph width (sans-serif)
WRAP = 26                                    # characters per pipeline line

STYLE = """
.box{stroke:#445;stroke-width:1.2}
.source .box{fill:#fdf1dc}.acq .box{fill:#e1edfb}.proc .box{fill:#e3f4e3}.file .box{fill:#f1f1f1}
.name{font-weight:bold}
.host{fill:#f6f6fb;stroke:#9a9ab0;stroke-dasharray:6 3}
.hostlabel{font-size:12px;fill:#556;font-style:italic}
.edge{fill:none;stroke:#5a6478;stroke-width:1.5}
.edge[data-kind=chain]{stroke:#c0641a;stroke-width:2}
.edge[data-kind=source],.edge[data-kind=file]{stroke:#999}
.label{font-size:11px;fill:#223;stroke:#fff;stroke-width:3px;paint-order:stroke}
.note{font-size:11px;fill:#667}
"""


@dataclass
class _Box:
    gid: str                 # id of its <g>
    key: str                 # its name in edges' data-from / data-to
    kind: str                # source | acq | proc | file
    lines: list[str]         # the first one is the title
    band: str                # the host whose band it sits in
    after: _Box | None = None   # a file: the node that writes it
    col: int = 0
    x: float = 0.0
    y: float = 0.0
    w: float = 0.0
    h: float = 0.0


def _rate(rate: float | None) -> str:
    return "rate max" if rate is None else f"rate {rate:g}/s"


def _source_lines(src: Any) -> list[str]:
    kind, address = getattr(src, "kind", "?"), getattr(src, "address", None)
    if kind in ("redpitaya", "mcpha"):
        what = "Red Pitaya (SCPI)" if kind == "redpitaya" else "Red Pitaya (MCPHA)"
        return ["emulated board", what] if address == EMULATOR else [what, f"{address}:{src.port}"]
    if kind == "synthetic":
        return ["synthetic generator", _rate(src.rate)]
    if kind == "pattern":
        return ["test pattern", _rate(src.rate)]
    if kind == "replay":      # not a source kind yet (docs/architecture.md, limits)
        return ["replayed file", str(getattr(src, "path", getattr(src, "file", "")))]
    return [f"source: {kind}", str(address or "")]


def _stage(st: Any) -> str:
    return "save csv" if st.stage == "save" and st.params.get("format") == "csv" else st.stage


def _wrap_pipeline(stages: list[str]) -> list[str]:
    """'a → b → c' broken at the arrows into lines of about WRAP characters."""
    lines = [stages[0]]
    for st in stages[1:]:
        if len(lines[-1]) + 3 + len(st) > WRAP:
            lines.append(f"→ {st}")
        else:
            lines[-1] += f" → {st}"
    return lines


def _boxes(topo: Topology) -> tuple[list[list[_Box]], list[tuple[_Box, _Box, dict[str, str]]]]:
    """The boxes by column and the edges (from, to, attributes) of the drawing."""
    src = {a: _Box(f"source-{a}", f"source:{a}", "source", _source_lines(c.source), c.host)
           for a, c in topo.acquisition.items()}
    acq = {a: _Box(f"node-{a}", a, "acq", [a, f"host {c.host}", f"ring {c.ring.slots} slots ({c.ring.policy}{', one-shot' if c.ring.capture == 'one-shot' else ''})",
                                            f"stream {c.stream}"], c.host) for a, c in topo.acquisition.items()}
    proc = {p: _Box(f"node-{p}", p, "proc", [p, f"host {c.host}", *_wrap_pipeline([_stage(st) for st in c.pipeline])],
                    c.host) for p, c in topo.processing.items()}
    edges: list[tuple[_Box, _Box, dict[str, str]]] = [(src[a], acq[a], {"kind": "source"}) for a in acq]
    chained, files = topo.chained(), []
    for p, cfg in topo.processing.items():
        if p not in chained:
            for a in topo.upstreams(p):
                stream = topo.streams[topo.acquisition[a].stream]
                edges.append((acq[a], proc[p], {"kind": "data", "stream": stream.name, "dispatch": stream.dispatch,
                                                "label": f"{stream.name} · {stream.dispatch}"}))
        sends: dict[str, list[str]] = {}
        for st in cfg.pipeline:
            if st.stage in ("forward", "copy"):
                sends.setdefault(st.params["to"], []).append(f"{st.stage} · {st.params.get('data', 'both')}")
        edges += [(proc[p], proc[t], {"kind": "chain", "label": ", ".join(labels)}) for t, labels in sends.items()]
        kinds = {st.params.get("format", "hdf5") if st.stage == "save" else "hdf5"
                 for st in cfg.pipeline if st.stage in ("save", "histogram")}
        for name, fmt, what in ((f"{p}.h5", "hdf5", "HDF5"), (f"{p}-*.csv", "csv", "CSV tables")):
            if fmt in kinds:
                files.append(_Box(f"file-{p}-{fmt}", f"file:{name}", "file", [name, what], cfg.host, proc[p]))
                edges.append((proc[p], files[-1], {"kind": "file"}))
    columns = [list(src.values()), list(acq.values())]
    columns += [[proc[p] for p in level] for level in topo.processing_levels()]
    return columns + ([files] if files else []), edges


def _layout(topo: Topology, columns: list[list[_Box]], edges: list[tuple[_Box, _Box, dict[str, str]]]
            ) -> tuple[list[tuple[str, str, float, float, float, float]], float, float]:
    """Place the boxes: columns left to right, one horizontal band per host.  Returns the host
    rectangles (host, label, x, y, w, h) and the drawing's width and height."""
    boxes = [b for col in columns for b in col]
    for b in boxes:       # room for the text, and for the ports of its edges on either side
        ports = max(sum(s is b for s, _, _ in edges), sum(d is b for _, d, _ in edges))
        b.w = max(130.0, max(len(t) for t in b.lines) * FONT * CHAR + 2 * PAD)
        b.h = max(2 * PAD + LINE * len(b.lines), 22.0 * (ports + 1))
    for s, d, _ in edges:  # a source as tall as its node: side by side in their columns
        if s.kind == "source":
            s.h = d.h = max(s.h, d.h)
    x = float(MARGIN)
    for c, col in enumerate(columns):
        width = max((b.w for b in col), default=0.0)
        for b in col:
            b.x, b.w, b.col = x, width, c
        x += width + GAP_X
    hosts, bands = bool(topo.hosts), list(dict.fromkeys(b.band for b in boxes))
    rects, y = [], float(TOP)
    for band in bands:
        y += 28 if hosts else 0
        stacks = [[b for b in col if b.band == band] for col in columns]
        height = max(sum(b.h for b in s) + GAP_Y * (len(s) - 1) for s in stacks if s)
        for stack in stacks:
            stack.sort(key=lambda b: b.after.y if b.after else 0.0)     # files beside their writers
            yy = y + (height - sum(b.h for b in stack) - GAP_Y * (len(stack) - 1)) / 2
            for b in stack:
                b.y, yy = yy, yy + b.h + GAP_Y
        inside = [b for b in boxes if b.band == band and b.kind != "source"]
        if hosts and inside:
            left, right = min(b.x for b in inside) - 14, max(b.x + b.w for b in inside) + 14
            label = f"{band} · {topo.host_address(band)}" + ("" if band in topo.hosts else " (coordinator)")
            rects.append((band, label, left, y - 28, right - left, height + 42))
        y += height + (30 if hosts else 2 * GAP_Y)
    return rects, x - GAP_X + MARGIN, y + 30


def _route(s: _Box, d: _Box, y1: float, y2: float, boxes: list[_Box], lanes: dict[str, int]) -> str:
    """An edge's path: a curve, or if a box of a column it skips is in the way, a lane under
    the boxes of the sender's band (the gap between bands is free of boxes)."""
    x1, x2 = s.x + s.w, d.x
    between = [b for b in boxes if s.col < b.col < d.col]
    if not any(b.y - 4 < max(y1, y2) and min(y1, y2) < b.y + b.h + 4 for b in between):
        bend = max((x2 - x1) / 2, 40.0)
        return f"M{x1:.1f},{y1:.1f} C{x1 + bend:.1f},{y1:.1f} {x2 - bend:.1f},{y2:.1f} {x2:.1f},{y2:.1f}"
    lanes[s.band] = lanes.get(s.band, 0) + 1
    lane = max([b.y + b.h for b in between if b.band == s.band] + [y1]) + 4 + 6 * lanes[s.band]
    h = GAP_X / 2
    return (f"M{x1:.1f},{y1:.1f} C{x1 + h:.1f},{y1:.1f} {x1 + h:.1f},{lane:.1f} {x1 + GAP_X - 10:.1f},{lane:.1f} "
            f"L{x2 - GAP_X + 10:.1f},{lane:.1f} C{x2 - h:.1f},{lane:.1f} {x2 - h:.1f},{y2:.1f} {x2:.1f},{y2:.1f}")


def _text(x: float, y: float, text: str, cls: str = "", anchor: str = "start") -> str:
    attr = f' class="{cls}"' if cls else ""
    return f'<text x="{x:.1f}" y="{y:.1f}"{attr} text-anchor="{anchor}">{escape(text)}</text>'


def write_data_flow(topo: Topology, path: Path) -> Path:
    """Write the data-flow diagram of `topo` as `<path>/data_flow.svg` (or to `path` itself if
    it ends in `.svg`) and return the file written."""
    path = Path(path)
    out = path if path.suffix == ".svg" else path / "data_flow.svg"
    columns, edges = _boxes(topo)
    rects, width, height = _layout(topo, columns, edges)
    ports: dict[tuple[int, str], list[tuple[float, int]]] = {}
    for i, (s, d, _) in enumerate(edges):     # ports sorted by the other end's height: fewer crossings
        ports.setdefault((id(s), "out"), []).append((d.y + d.h / 2, i))
        ports.setdefault((id(d), "in"), []).append((s.y + s.h / 2, i))

    def port(b: _Box, side: str, i: int) -> float:
        order = [j for _, j in sorted(ports[(id(b), side)])]
        return b.y + b.h * (order.index(i) + 1) / (len(order) + 1)

    svg = ['<?xml version="1.0" encoding="UTF-8"?>',
           f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
           f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="DejaVu Sans, Liberation Sans, Arial, sans-serif" '
           f'font-size="{FONT}">', f"<style>{STYLE}</style>",
           "<defs>" + "".join(f'<marker id="{m}" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" '
                              f'markerHeight="8" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="{c}"/></marker>'
                              for m, c in (("arrow", "#5a6478"), ("arrow-chain", "#c0641a"))) + "</defs>",
           f'<rect width="{width:.0f}" height="{height:.0f}" fill="white"/>',
           _text(MARGIN, 30, f"data flow: {topo.name}", "name")]
    svg += [f'<g id={quoteattr(f"host-{host}")}><rect class="host" x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" '
            f'height="{h:.1f}" rx="10"/>{_text(x + 10, y + 18, label, "hostlabel")}</g>'
            for host, label, x, y, w, h in rects]
    labels, lanes, boxes = [], {}, [b for col in columns for b in col]
    for i, (s, d, attrs) in enumerate(edges):
        x2, y2 = d.x, port(d, "in", i)
        extra = "".join(f" data-{k}={quoteattr(v)}" for k, v in attrs.items() if k in ("kind", "stream", "dispatch"))
        marker = "arrow-chain" if attrs["kind"] == "chain" else "arrow"
        svg.append(f'<path class="edge" data-from={quoteattr(s.key)} data-to={quoteattr(d.key)}{extra} '
                   f'd="{_route(s, d, port(s, "out", i), y2, boxes, lanes)}" marker-end="url(#{marker})">'
                   f'<title>{escape(f"{s.key} → {d.key}")}</title></path>')
        if attrs.get("label"):
            labels.append(_text(x2 - 10, y2 - 5, attrs["label"], "label", "end"))
    for b in boxes:
        svg.append(f'<g id={quoteattr(b.gid)} class="{b.kind}">'
                   f'<rect class="box" x="{b.x:.1f}" y="{b.y:.1f}" width="{b.w:.1f}" height="{b.h:.1f}" rx="5"/>')
        top = b.y + (b.h - LINE * len(b.lines)) / 2 + FONT
        svg += [_text(b.x + PAD, top + k * LINE, t, "name" if k == 0 else "") for k, t in enumerate(b.lines)]
        svg.append("</g>")
    svg += labels
    svg.append(_text(MARGIN, height - 12, "full: every part of an event goes to one processing node · "
                     "partial: each module's frames on their own, by credit", "note"))
    out.write_text("\n".join(svg + ["</svg>", ""]), encoding="utf-8")
    return out
