"""Red Pitaya with KIT's MCPHA server: waveforms in sets, far fewer round trips than SCPI.

The protocol carries no trigger time, so a set's frames get the time its first bytes were
asked for (flag FLAG_TIME_APPROX in `flags`). The two inputs arrive interleaved and are
split into the stream's channels with one strided copy per set.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from acqnode.boards.link import BoardError
from acqnode.boards.mcpha import McphaClient
from acqnode.sources.boardsource import BoardSession, Readout, monotonic_origin, stamp
from coordinator.frames import FLAG_TIME_APPROX, channel_names
from coordinator.topology.model import McphaSource, StreamConfig

class McphaFrames:
    triggered = True

    def __init__(self, config: McphaSource, stream: StreamConfig, node: str = "",
                 board: tuple[str, int] | None = None) -> None:
        self.config = config
        self.dtype = stream.dtype
        self.samples = stream.samples
        self.pre = config.pretrigger if config.pretrigger is not None else stream.samples // 8
        self.columns = [(name, int(name[-1]) - 1) for name in channel_names(self.dtype)]   # IN1 -> 0
        host, port = board if board is not None else (config.address, config.port)
        self.client = McphaClient(host, port, config.link.timeout)
        self.session = BoardSession(config.link, self.client.link.where)
        self.scratch = np.empty((max(1, config.waveforms), self.samples, 2), np.int16)
        self.t0_ns = time.monotonic_ns()
        self.client.connect()
        self.configure()

    def configure(self) -> None:
        c, t = self.config, self.config.trigger
        self.client.setup(c.decimation, 0 if t.source == "IN1" else 1, t.slope == "falling",
                          t.mode == "auto", t.level, self.pre, self.samples,
                          tuple(int(i[-1]) - 1 for i in c.invert))
        self.hardware: dict[str, Any] = {
            "protocol": "mcpha", "decimation": c.decimation, "trigger_source": t.source,
            "trigger_slope": t.slope, "trigger_mode": t.mode, "trigger_level_counts": t.level,
            "pretrigger": self.pre, "samples": self.samples, "invert": list(c.invert),
            "note": "the MCPHA protocol has no read-back; these are the values sent"}

    def _reconnect(self) -> None:
        self.client.connect()
        self.configure()

    def read(self, first: int, out: np.ndarray, timeout: float) -> Readout:
        s = self.session
        if s.outage_since is not None:
            return s.ride_out(self._reconnect, timeout)
        n = min(len(out), len(self.scratch))
        t_ns = time.monotonic_ns() - self.t0_ns
        try:
            waves = self.client.read_waveforms(n, self.samples, self.scratch)
        except BoardError as exc:
            s.failed(exc)
            self.client.close()
            return Readout(0)
        recs = out[:n]
        for name, k in self.columns:
            recs[name] = waves[:, :, k]
        stamp(recs, first, t_ns, FLAG_TIME_APPROX)
        s.triggers += n
        return Readout(n)

    def frames(self, first: int, n: int, out: np.ndarray | None = None) -> np.ndarray:
        raise TypeError("an MCPHA board triggers frames itself; the reader uses read()")

    def set_epoch(self, epoch_ns: int) -> None:
        self.t0_ns = monotonic_origin(epoch_ns)

    def new_run(self) -> None:
        self.session.new_run()

    def pace(self, seq: int) -> float:
        return 0.0

    def report(self) -> dict:
        return {**self.session.report(), "commands": self.client.commands,
                "bytes_in": self.client.link.bytes_in, "connects": self.client.link.connects}

    def close(self) -> None:
        self.client.close()
