"""Topology: the one YAML file describing the whole system, loaded and checked once before anything starts.

    from coordinator.topology import load_topology, TopologyError
    topology = load_topology("topologies/loopback.yaml")   # raises TopologyError listing every problem

See docs/topology.md for the keys, their defaults and the error format.
"""
from coordinator.topology.load import Problem, TopologyError, load_topology, topology_from_dict
from coordinator.topology.model import (
    LOCALHOST,
    SCHEMA_VERSION,
    AcquisitionConfig,
    Component,
    ControlConfig,
    HostConfig,
    PatternSource,
    ProcessingConfig,
    RingConfig,
    RunConfig,
    SourceConfig,
    StageConfig,
    StreamConfig,
    SyntheticSource,
    Topology,
)

__all__ = [
    "load_topology", "topology_from_dict", "TopologyError", "Problem",
    "Topology", "RunConfig", "ControlConfig", "HostConfig", "StreamConfig",
    "AcquisitionConfig", "ProcessingConfig", "StageConfig", "RingConfig",
    "SourceConfig", "SyntheticSource", "PatternSource", "Component", "LOCALHOST", "SCHEMA_VERSION",
]
