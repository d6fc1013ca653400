"""Acquisition now, processing later: runs that save raw frames only, and pipelines run over
finished runs.

A `run.process: later` run keeps the topology's pipelines as what was asked, but its
processing nodes only save every frame raw (HDF5).  `daq-coordinator process RUN_DIR`
then runs a pipeline over that run: the same topology, its acquisition nodes replaying the
run's frames (`source: {kind: replay}`, with the original source kept for axes and units),
and either the pipelines asked for at acquisition time or those of a pipeline file.  The
processing is a run of its own (own number, own record, own control port), so a new
acquisition may start while an older run is being processed.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import yaml

from coordinator.topology import Problem, Topology, TopologyError, topology_from_dict
from coordinator.topology.model import StageConfig

RAW_ONLY = (StageConfig("save", {"format": "hdf5", "data": "raw"}),)


def raw_only(topo: Topology) -> Topology:
    """The topology a `process: later` run uses: every processing node saves raw frames only."""
    if topo.chained():
        raise TopologyError([Problem(str(topo.path or topo.name), None, "run.process",
                                     "process: later takes no chains of processing nodes (forward/copy stages)")])
    return dataclasses.replace(topo, processing={n: dataclasses.replace(p, pipeline=RAW_ONLY)
                                                 for n, p in topo.processing.items()})


def processing_topology(run_dir: Path, pipeline_file: Path | None = None) -> Topology:
    """The topology that processes finished run `run_dir`: its acquisition nodes replay it; the
    processing section is the pipeline file's (`pipeline: [...]` for every node, or a whole
    `processing:` section for one or several nodes) or the one asked for at acquisition."""
    run_dir = Path(run_dir).absolute()
    record_path = run_dir / "run.json"
    if not record_path.exists():
        raise TopologyError([Problem(str(run_dir), None, "", "no run.json: not a finished run (or recover it first)")])
    record = json.loads(record_path.read_text())
    asked = record.get("parameters", {}).get("requested", {}).get("topology")
    data: dict[str, Any] = asked or yaml.safe_load((run_dir / "topology.yaml").read_text())
    data = json.loads(json.dumps(data))
    for name, acq in data["acquisition"].items():
        acq["source"] = {"kind": "replay", "run": str(run_dir), "original": acq["source"]}
        acq["ring"]["policy"] = "block"      # a replay waits for the network, it never drops
        acq["ring"]["capture"] = "continuous"     # and ships while it reads
    data.pop("emulator", None)
    data["run"].update({"frames": None, "duration": None, "process": "online"})
    data["control"]["port"] = 0
    if pipeline_file is not None:
        spec = load_pipeline_file(pipeline_file)
        if "processing" in spec:
            data["processing"] = spec["processing"]
        else:
            for proc in data["processing"].values():
                proc["pipeline"] = spec["pipeline"]
    base = Path(record.get("topology_file") or run_dir).parent
    return dataclasses.replace(topology_from_dict(data, source=str(pipeline_file or run_dir), base_dir=base),
                               path=None)


def load_pipeline_file(path: Path) -> dict:
    """`pipeline: [stages]` (every processing node) or `processing: {node: {...}}` (a section
    as in a topology); checked with the topology it goes into."""
    try:
        spec = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise TopologyError([Problem(str(path), None, "", f"cannot read the pipeline file: {exc}")]) from None
    if not isinstance(spec, dict) or len(set(spec) & {"pipeline", "processing"}) != 1:
        raise TopologyError([Problem(str(path), None, "", "expected `pipeline: [stages]` or `processing: {...}`")])
    return spec
