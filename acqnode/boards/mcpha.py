"""Client for the oscilloscope of KIT's MCPHA server on Red Pitaya boards (TCP port 1001).

Each command is one little-endian uint64: code in bits 63..56, channel in 55..52, value in
the low 52 bits. After setting up the oscilloscope, code 31 with value N asks for N
waveforms; the server answers each with (total samples) x 2 int16, IN1 and IN2 interleaved.
"""
from __future__ import annotations

import struct

import numpy as np

from acqnode.boards.link import Link

RESET_OSC, SAMPLE_RATE, NEGATE = 2, 4, 5
TRIGGER_SOURCE, TRIGGER_SLOPE, TRIGGER_MODE, TRIGGER_LEVEL = 13, 14, 15, 16
PRE_SAMPLES, TOTAL_SAMPLES, START_OSC, READ_WAVEFORMS = 17, 18, 19, 31
VALUE_MASK = (1 << 52) - 1
DECIMATIONS = (1, 4, 8, 16, 32, 64, 128, 256)


def command_word(code: int, channel: int = 0, value: int = 0) -> bytes:
    """One command; a negative value (trigger level) is sent in two's complement of 52 bits."""
    if not 0 <= code < 256 or not 0 <= channel < 16:
        raise ValueError(f"MCPHA command code {code} / channel {channel} out of range")
    return struct.pack("<Q", (code << 56) | (channel << 52) | (value & VALUE_MASK))


class McphaClient:
    def __init__(self, host: str, port: int = 1001, timeout: float = 2.0) -> None:
        self.link = Link(host, port, timeout, "MCPHA server")
        self.commands = 0

    def connect(self) -> "McphaClient":
        self.link.connect()
        return self

    def close(self) -> None:
        self.link.close()

    def send(self, *words: bytes) -> None:
        self.commands += len(words)
        self.link.send(b"".join(words))

    def setup(self, decimation: int, trigger_source: int, falling: bool, auto: bool, level: int,
              pre: int, total: int, negate: tuple[int, ...] = ()) -> None:
        """Reset and configure the oscilloscope (inputs 0 = IN1, 1 = IN2), then start it.
        Levels are in counts (4096 per volt, as the clients of the MCPHA image assume)."""
        if decimation not in DECIMATIONS:
            raise ValueError(f"MCPHA decimation {decimation} is not one of {DECIMATIONS}")
        words = [command_word(RESET_OSC), command_word(SAMPLE_RATE, 0, decimation)]
        words += [command_word(NEGATE, ch, int(ch in negate)) for ch in (0, 1)]
        words += [command_word(TRIGGER_SOURCE, trigger_source),   # the input goes in the channel field
                  command_word(TRIGGER_SLOPE, 0, int(falling)),
                  command_word(TRIGGER_MODE, 0, int(auto)),
                  command_word(TRIGGER_LEVEL, 0, level),
                  command_word(PRE_SAMPLES, 0, pre),
                  command_word(TOTAL_SAMPLES, 0, total),
                  command_word(START_OSC)]
        self.send(*words)

    def read_waveforms(self, n: int, total: int, out: np.ndarray | None = None) -> np.ndarray:
        """Ask for n waveforms and receive them: an (n, total, 2) int16 array (IN1, IN2)."""
        if out is None:
            out = np.empty((n, total, 2), np.int16)
        self.send(command_word(READ_WAVEFORMS, 0, n))
        self.link.read_into(memoryview(out[:n]).cast("B"))
        return out[:n]
