"""`daq-acqnode`: the acquisition node a host runs (started by the coordinator or an operator)."""
from coordinator.noderuntime import node_command


def _load() -> type:
    from acqnode.node import AcqNode
    return AcqNode


main = node_command(_load, "Run one acquisition node until the coordinator shuts it down.")
