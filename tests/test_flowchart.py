"""data_flow.svg (coordinator/flowchart.py): well-formed, complete, boxes apart, renders in a browser."""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from conftest import chromium, needs_chromium, write_topology
from coordinator.flowchart import write_data_flow
from coordinator.topology import Topology, load_topology

HERE = Path(__file__).parent
ROOT = HERE.parent
SVG = "{http://www.w3.org/2000/svg}"
EXAMPLES = sorted((ROOT / "topologies").glob("*.yaml")) + sorted((HERE / "topologies" / "good").glob("*.yaml"))

#: Two hosts, a partial stream whose modules go to different front nodes, a three-level chain
#: (copy and forward), CSV and HDF5 outputs, a real board and an emulated one.
CHAIN = {
    "topology": 1, "name": "lab-chain",
    "control": {"address": "10.0.0.1", "port": 5555},
    "hosts": {"daq1": {"address": "10.0.0.11", "launch": "ssh"}, "daq2": {"address": "10.0.0.12", "launch": "ssh"}},
    "streams": {"pulses": {"samples": 1024, "channels": {"IN1": "int16"}, "dispatch": "partial"}},
    "acquisition": {
        "rp1": {"host": "daq1", "stream": "pulses", "source": {"kind": "redpitaya", "address": "192.168.1.10"}},
        "rp2": {"host": "daq1", "stream": "pulses", "source": {"kind": "mcpha", "address": "emulator"}},
    },
    "processing": {
        "front1": {"host": "daq1", "modules": ["rp1"], "pipeline": [
            {"stage": "pha", "channel": "IN1", "height": 0.05},
            {"stage": "copy", "to": "back", "data": "both"},
            {"stage": "save", "format": "csv"}]},
        "front2": {"host": "daq1", "modules": ["rp2"], "pipeline": [
            {"stage": "pha", "channel": "IN1", "height": 0.05},
            {"stage": "forward", "to": "back", "data": "reduced"}]},
        "back": {"host": "daq2", "pipeline": [
            {"stage": "histogram", "name": "spectrum", "field": "height", "bins": [0.0, 1.0, 100]},
            {"stage": "forward", "to": "archive", "data": "reduced"}]},
        "archive": {"pipeline": [{"stage": "save", "format": "hdf5", "data": "reduced"}]},
    },
}


def rect(el: ET.Element) -> tuple[float, float, float, float]:
    return tuple(float(el.get(k)) for k in ("x", "y", "width", "height"))  # type: ignore[return-value]


def overlap(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def inside(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return b[0] <= a[0] and a[0] + a[2] <= b[0] + b[2] and b[1] <= a[1] and a[1] + a[3] <= b[1] + b[3]


def check_diagram(topo: Topology, svg: Path) -> ET.Element:
    """The checks every diagram passes; returns the parsed root."""
    root = ET.parse(svg).getroot()
    assert root.tag == f"{SVG}svg" and len(root.get("viewBox", "").split()) == 4
    sizes = [float(s) for s in re.findall(r"font-size:\s*([\d.]+)px", root.findtext(f"{SVG}style") or "")]
    assert sizes and min(sizes + [float(root.get("font-size"))]) >= 11, "unreadable text"
    groups = {g.get("id"): g for g in root.iter(f"{SVG}g")}
    for name in topo.nodes():
        assert f"node-{name}" in groups, name
    for name, cfg in topo.processing.items():
        text = " ".join(groups[f"node-{name}"].itertext())
        pos = text.index(f"host {cfg.host}")
        for st in cfg.pipeline:                                        # every stage, in order
            pos = text.index(st.stage, pos + 1)
    for name, cfg in topo.acquisition.items():
        text = " ".join(groups[f"node-{name}"].itertext())
        assert all(s in text for s in (name, cfg.host, cfg.stream, str(cfg.ring.slots))), text

    edges = [e for e in root.iter() if e.tag in (f"{SVG}path", f"{SVG}line") and e.get("class") == "edge"]
    pairs = {(e.get("data-from"), e.get("data-to")) for e in edges}
    assert len(pairs) == len(edges), "an edge is drawn twice"
    for acq, cfg in topo.acquisition.items():
        assert (f"source:{acq}", acq) in pairs
        for proc in topo.downstreams(acq):
            edge = next(e for e in edges if (e.get("data-from"), e.get("data-to")) == (acq, proc))
            assert edge.get("data-stream") == cfg.stream
            assert edge.get("data-dispatch") == topo.streams[cfg.stream].dispatch
    for proc, cfg in topo.processing.items():
        for target in cfg.forwards_to():
            assert (proc, target) in pairs
    expected = {(f"source:{a}", a) for a in topo.acquisition}
    expected |= {(u, p) for p in topo.processing for u in topo.upstreams(p)}
    assert {pr for pr in pairs if not pr[1].startswith("file:")} == expected

    boxes = [(g.get("id"), rect(r)) for g in root.iter(f"{SVG}g") for r in g.iter(f"{SVG}rect")
             if r.get("class") == "box"]
    assert len(boxes) >= len(topo.nodes())
    width, height = (float(v) for v in root.get("viewBox").split()[2:])
    for i, (name, a) in enumerate(boxes):
        assert 0 <= a[0] and a[0] + a[2] <= width and 0 <= a[1] and a[1] + a[3] <= height, name
        for other, b in boxes[i + 1:]:
            assert not overlap(a, b), (name, other)
    return root


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples(tmp_path: Path, path: Path) -> None:
    topo = load_topology(path)
    out = write_data_flow(topo, tmp_path)
    assert out == tmp_path / "data_flow.svg"
    check_diagram(topo, out)


def test_loopback(tmp_path: Path) -> None:
    topo = load_topology(ROOT / "topologies" / "loopback.yaml")
    root = check_diagram(topo, write_data_flow(topo, tmp_path))
    edges = {(e.get("data-from"), e.get("data-to")) for e in root.iter(f"{SVG}path") if e.get("class") == "edge"}
    assert {(a, p) for a in ("rp1", "rp2") for p in ("proc1", "proc2")} <= edges
    assert {("proc1", "file:proc1.h5"), ("proc2", "file:proc2.h5")} <= edges
    text = " ".join(root.itertext())
    assert "emulated board" in text and "pulses · full" in text
    assert not [r for r in root.iter(f"{SVG}rect") if r.get("class") == "host"], "no hosts section: no host boxes"


def test_chain_and_hosts(tmp_path: Path) -> None:
    topo = load_topology(write_topology(tmp_path, CHAIN))
    assert topo.processing_levels() == [["front1", "front2"], ["back"], ["archive"]]
    out = write_data_flow(topo, tmp_path / "picture.svg")
    assert out == tmp_path / "picture.svg"
    root = check_diagram(topo, out)
    edges = {(e.get("data-from"), e.get("data-to")): e for e in root.iter(f"{SVG}path") if e.get("class") == "edge"}
    for pair in (("front1", "back"), ("front2", "back"), ("back", "archive")):
        assert edges[pair].get("data-kind") == "chain"
    assert {("rp1", "front1"), ("rp2", "front2")} <= set(edges) and ("rp1", "front2") not in edges
    assert {("front1", "file:front1-*.csv"), ("back", "file:back.h5"), ("archive", "file:archive.h5")} <= set(edges)
    assert not any(to.startswith("file:front2") for _, to in edges), "front2 writes nothing"
    text = " ".join(root.itertext())
    for s in ("192.168.1.10:5000", "Red Pitaya (MCPHA)", "copy · both", "forward · reduced", "pulses · partial"):
        assert s in text, s

    # one host box per host in use, labelled with its address, around its nodes' boxes
    hosts = {}
    for g in root.iter(f"{SVG}g"):
        for r in g.iter(f"{SVG}rect"):
            if r.get("class") == "host":
                hosts[" ".join(g.itertext())] = rect(r)
    wanted = {"daq1": "10.0.0.11", "daq2": "10.0.0.12", "localhost": "10.0.0.1"}
    assert len(hosts) == len(wanted)
    boxes = {g.get("id"): rect(g.find(f"{SVG}rect")) for g in root.iter(f"{SVG}g") if g.get("id")}
    for host, address in wanted.items():
        label, area = next((k, v) for k, v in hosts.items() if k.startswith(f"{host} "))
        assert address in label
        for name in topo.nodes():
            node = topo.acquisition.get(name) or topo.processing[name]
            assert inside(boxes[f"node-{name}"], area) == (node.host == host), (host, name)
    areas = list(hosts.values())
    assert not any(overlap(a, b) for i, a in enumerate(areas) for b in areas[i + 1:])


@needs_chromium
def test_renders_in_chromium(tmp_path: Path) -> None:
    topo = load_topology(write_topology(tmp_path, CHAIN))
    svg = write_data_flow(topo, tmp_path)
    empty = tmp_path / "empty.svg"
    empty.write_text('<svg xmlns="http://www.w3.org/2000/svg" width="400" height="300" viewBox="0 0 400 300">'
                     '<rect width="400" height="300" fill="white"/></svg>')
    shots = []
    for name, source in (("flow", svg), ("empty", empty)):
        png = tmp_path / f"{name}.png"
        chromium(source.as_uri(), tmp_path / f"profile-{name}", f"--screenshot={png}")
        assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        shots.append(png.read_bytes())
    flow, blank = shots
    assert len(flow) > 8000 and len(flow) > 2 * len(blank), (len(flow), len(blank))
