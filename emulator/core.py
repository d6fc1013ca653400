"""`Emulator`: the boards of an `EmulatorConfig`, each serving SCPI and MCPHA on real TCP ports."""
from __future__ import annotations

import functools
import threading

from emulator import mcpha, scpi
from emulator.board import Board
from emulator.config import EmulatorConfig
from emulator.link import Link
from emulator.server import TcpService
from emulator.signal import BoardSignal
from emulator.timeline import Clock, Timeline
from emulator.triggergroup import TriggerGroup


class Emulator:
    """Start with `start()` or `with`; `close()` stops and joins everything (idempotent).

    With `common_trigger`, `trigger_group` joins the boards' SCPI acquisitions (the first
    board is the master, see `emulator.triggergroup`); otherwise it is None.
    """

    def __init__(self, config: EmulatorConfig | None = None) -> None:
        self.config = cfg = config or EmulatorConfig()
        self.clock = Clock()
        self._stop = threading.Event()
        self._boards: dict[str, Board] = {}
        self._scpi: dict[str, TcpService] = {}
        self._mcpha: dict[str, TcpService] = {}
        self.trigger_group = TriggerGroup(cfg.boards, self.clock) if cfg.common_trigger else None
        shared = self._timeline(0)
        for i, name in enumerate(cfg.boards):
            timeline = shared if cfg.shared else self._timeline(i + 1)
            signal = BoardSignal(timeline, cfg.seed, i, cfg.noise, cfg.baseline, cfg.rise_ns, cfg.decay_ns)
            link = Link(cfg.bandwidth, cfg.latency)
            board = Board(name, i, signal, self.clock, link, self.trigger_group)
            self._boards[name] = board
            for kind, module, ports, table in (("scpi", scpi, cfg.scpi_ports, self._scpi),
                                               ("mcpha", mcpha, cfg.mcpha_ports, self._mcpha)):
                handler = functools.partial(module.serve_connection, board, self._stop)
                service = TcpService(f"{name}-{kind}", cfg.host, ports[i] if ports else 0, handler, self._stop)
                table[name] = service
                board.attach(service)
        self._started = False

    def _timeline(self, stream: int) -> Timeline:
        cfg = self.config
        return Timeline(cfg.rate, cfg.seed, stream, cfg.amplitude, cfg.polarity)

    def start(self) -> "Emulator":
        """Bind every port (all or none: on failure what was bound is closed again) and serve."""
        if self._started:
            return self
        try:
            for name in self._boards:
                self._scpi[name].start()
                self._mcpha[name].start()
        except OSError:
            self.close()
            raise
        self._started = True
        return self

    def close(self) -> None:
        self._stop.set()
        for service in [*self._scpi.values(), *self._mcpha.values()]:
            service.close()

    def __enter__(self) -> "Emulator":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def board(self, name: str) -> Board:
        return self._boards[name]

    @property
    def boards(self) -> tuple[str, ...]:
        return tuple(self._boards)

    def scpi_address(self, name: str) -> tuple[str, int]:
        return self._scpi[name].address

    def mcpha_address(self, name: str) -> tuple[str, int]:
        return self._mcpha[name].address
