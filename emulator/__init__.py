"""Red Pitaya board emulator: real TCP servers speaking the board's SCPI and MCPHA protocols.

    from emulator import Emulator, EmulatorConfig
    with Emulator(EmulatorConfig(boards=("rp1", "rp2"))) as emu:
        host, port = emu.scpi_address("rp1")

See docs/redpitaya.md, section "The emulator".
"""
from emulator.config import EmulatorConfig
from emulator.core import Emulator
from emulator.server import PortInUse

__all__ = ["Emulator", "EmulatorConfig", "PortInUse"]
