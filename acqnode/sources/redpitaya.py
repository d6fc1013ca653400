"""Red Pitaya over SCPI: the documented acquisition loop, one frame per trigger.

Per frame: `ACQ:START`, wait until the pretrigger part of the buffer is written,
`ACQ:TRig <source>`, poll `ACQ:TRig:STAT?` until `TD` and `ACQ:TRig:FILL?` until 1,
`ACQ:TPOS?`, then each input's samples `ACQ:SOUR<n>:DATA:STArt:N? <tpos - pretrigger>,<samples>`
as a binary block received straight into the frame's ring slot.

Pretrigger: the board keeps 8192 + `ACQ:TRig:DLY` samples after the trigger in its
16384-sample buffer, so DLY = max(0, samples - pretrigger - 8192) and the frame is read
starting `pretrigger` samples before the trigger position.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from acqnode.boards.link import BoardError, BoardTimeout
from acqnode.boards.scpi import ScpiClient, ScpiError
from acqnode.sources.boardsource import BoardSession, Readout, monotonic_origin, stamp
from coordinator.frames import FLAG_TIME_APPROX, channel_names
from coordinator.topology.model import RedPitayaSource, StreamConfig

BUFFER = 16384
POST_AT_DLY_0 = 8192
SAMPLE_NS = 8.0                      # 125 MS/s before decimation
TRIGGER_WORDS = {("IN1", "rising"): "CH1_PE", ("IN1", "falling"): "CH1_NE",
                 ("IN2", "rising"): "CH2_PE", ("IN2", "falling"): "CH2_NE",
                 ("EXT", "rising"): "EXT_PE", ("EXT", "falling"): "EXT_NE"}
POLL_MIN, POLL_MAX = 0.0002, 0.002   # s between status polls: first fast, then backing off


class RedPitayaFrames:
    triggered = True

    def __init__(self, config: RedPitayaSource, stream: StreamConfig, node: str = "",
                 board: tuple[str, int] | None = None) -> None:
        self.config = config
        self.dtype = stream.dtype
        self.samples = stream.samples
        self.pre = config.pretrigger if config.pretrigger is not None else stream.samples // 8
        self.dly = max(0, self.samples - self.pre - POST_AT_DLY_0)
        self.inputs = [int(c[-1]) for c in channel_names(self.dtype)]      # IN1 -> 1
        self.key = f"acquisition.{node}.source" if node else "source"
        host, port = board if board is not None else (config.address, config.port)
        self.client = ScpiClient(host, port, config.link.timeout)
        self.session = BoardSession(config.link, self.client.link.where)
        self.sample_ns = SAMPLE_NS * config.decimation
        self.armed = False
        self.t0_ns = time.monotonic_ns()
        self.hardware: dict[str, Any] = {}
        self.client.connect()
        self.configure()

    # -- settings ------------------------------------------------------------------------
    def settings(self) -> list[tuple[str, str]]:
        """(command, topology key) in the order the board is set up."""
        c = self.config
        out = [("ACQ:RST", ""),
               (f"ACQ:DEC {c.decimation}", "decimation"),
               (f"ACQ:DATA:FORMAT {c.data_format.upper()}", "data_format"),
               (f"ACQ:DATA:Units {c.units.upper()}", "units")]
        if c.data_format == "bin":
            out.append((f"ACQ:DATA:BYTE:ORDER {'BEND' if c.byte_order == 'big' else 'LEND'}", "byte_order"))
        out += [(f"ACQ:SOUR{n}:GAIN {c.gain}", "gain") for n in (1, 2)]
        if c.trigger.source != "NOW":
            out.append((f"ACQ:TRig:LEV {c.trigger.level}", "trigger.level"))
        out.append((f"ACQ:TRig:DLY {self.dly}", "pretrigger"))
        return out

    def configure(self) -> None:
        """Apply every setting, each checked, so a rejection names its topology key; then read
        back what the board accepted (the hardware parameter set of run.json)."""
        for command, key in self.settings():
            self.client.write(command)
            try:
                self.client.settle(command)
            except ScpiError as exc:
                where = f"{self.key}.{key}" if key else self.key
                raise ScpiError(command, exc.code, f"{exc.board_message} (topology key {where})",
                                self.client.link.where) from None
        q = self.client.query
        self.hardware = {
            "idn": q("*IDN?"), "decimation": self.client.query_int("ACQ:DEC?"),
            "trigger_delay": self.client.query_int("ACQ:TRig:DLY?"),
            "trigger_level": self.client.query_float("ACQ:TRig:LEV?"),
            "gain": {f"IN{n}": q(f"ACQ:SOUR{n}:GAIN?") for n in (1, 2)},
            "units": q("ACQ:DATA:Units?"), "data_format": q("ACQ:DATA:FORMAT?"),
            "buffer_size": self.client.query_int("ACQ:BUF:SIZE?"),
        }
        if self.config.data_format == "bin":
            self.hardware["byte_order"] = q("ACQ:DATA:BYTE:ORDER?")
        self.armed = False

    # -- acquisition ------------------------------------------------------------------------
    def _arm(self) -> None:
        self.client.write("ACQ:START")
        # pretrigger samples must be in the buffer before a trigger may come
        time.sleep(self.pre * self.sample_ns * 1e-9)
        word = "NOW" if self.config.trigger.source == "NOW" else \
            TRIGGER_WORDS[(self.config.trigger.source, self.config.trigger.slope)]
        self.client.write(f"ACQ:TRig {word}")
        self.armed = True

    def _wait_for(self, query: str, value: str, deadline: float) -> bool:
        pause = POLL_MIN
        while True:
            if self.client.query(query) == value:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(pause)
            pause = min(POLL_MAX, pause * 2)

    def _reconnect(self) -> None:
        self.client.reconnect()
        self.configure()

    def read(self, first: int, out: np.ndarray, timeout: float) -> Readout:
        """Frames that trigger within `timeout` s, at most len(out)."""
        s = self.session
        if s.outage_since is not None:
            return s.ride_out(self._reconnect, timeout)
        deadline = time.monotonic() + timeout
        n = 0
        try:
            while n < len(out):
                if not self.armed:
                    self._arm()
                if not self._wait_for("ACQ:TRig:STAT?", "TD", deadline):
                    break
                t_ns = time.monotonic_ns() - self.t0_ns
                s.triggers += 1
                self.armed = False
                fill_deadline = time.monotonic() + self.config.link.timeout + \
                    (POST_AT_DLY_0 + self.dly) * self.sample_ns * 1e-9
                if not self._wait_for("ACQ:TRig:FILL?", "1", fill_deadline):
                    raise BoardTimeout(f"{self.client.link.where}: buffer not filled after the trigger")
                self._read_frame(out[n:n + 1], first + n, t_ns)
                n += 1
                if time.monotonic() >= deadline:
                    break
        except BoardError as exc:
            if isinstance(exc, ScpiError):
                raise            # a rejected command is a configuration error, not an outage
            readout = s.failed(exc)
            self.client.close()
            self.armed = False
            if readout.lost:    # corrupt block: reconnect now and carry on
                try:
                    self._reconnect()
                except BoardError as again:
                    s.failed(again)
            return Readout(n, readout.lost, readout.cause)
        return Readout(n)

    def _read_frame(self, rec: np.ndarray, seq: int, t_ns: int) -> None:
        """Into `rec`, one record (a length-1 view of the ring slot)."""
        tpos = self.client.query_int("ACQ:TPOS?")
        start = (tpos - self.pre) % BUFFER
        big = self.config.data_format == "bin" and self.config.byte_order == "big"
        for name, n in zip(channel_names(self.dtype), self.inputs):
            dest = rec[name][0]
            command = f"ACQ:SOUR{n}:DATA:STArt:N? {start},{self.samples}"
            if self.config.data_format == "bin":
                self.client.query_block(command, out=dest)
                if big:
                    dest.byteswap(inplace=True)
            else:
                dest[:] = self.client.query_values(command, dest.dtype)
        stamp(rec, seq, t_ns, FLAG_TIME_APPROX)   # the host saw TD: the board gives no trigger time

    # -- the reader's interface --------------------------------------------------------------
    def frames(self, first: int, n: int, out: np.ndarray | None = None) -> np.ndarray:
        raise TypeError("a Red Pitaya triggers frames itself; the reader uses read()")

    def set_epoch(self, epoch_ns: int) -> None:
        self.t0_ns = monotonic_origin(epoch_ns)

    def new_run(self) -> None:
        """The next run of the same settings: the board stays configured; re-armed on read."""
        self.session.new_run()
        self.armed = False

    def resumed(self) -> None:
        """After a pause: a frame the board captured while paused is not taken (re-armed)."""
        self.armed = False

    def pace(self, seq: int) -> float:
        return 0.0

    def report(self) -> dict:
        return {**self.session.report(), "commands": self.client.commands,
                "bytes_in": self.client.link.bytes_in, "connects": self.client.link.connects}

    def close(self) -> None:
        try:
            if self.client.link.connected:
                self.client.write("ACQ:STOP")
        except BoardError:
            pass
        self.client.close()
