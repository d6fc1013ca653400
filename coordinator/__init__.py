"""Coordinator of the DAQ system; owns the contracts shared by every node (topology model, frames, wire messages)."""

__version__ = "0.1.0"
PROTOCOL_VERSION = 2
