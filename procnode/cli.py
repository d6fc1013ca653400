"""`daq-procnode`: the processing node a host runs (started by the coordinator or an operator)."""
from coordinator.noderuntime import node_command


def _load() -> type:
    from procnode.node import ProcNode
    return ProcNode


main = node_command(_load, "Run one processing node until the coordinator shuts it down.")
