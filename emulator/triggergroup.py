"""Common trigger: the boards of one emulator capture the same events (`EmulatorConfig.common_trigger`).

It models boards wired together as in a lab, through a busy-gated daisy chain or a
coincidence unit: the first board (index 0, the master) decides when the group fires
from its own trigger settings (source, slope, level, gain clip, as its SCPI client set
them); the others are slaved to it like an EXT input, their own source only has to be
armed (not DISABLED), their level and source are ignored.

Busy logic: round r fires only when every board is armed for round r, i.e. has received
r group triggers and got ACQ:START + ACQ:TRig <src> since.  The trigger is the first
sample of the master, at or after the latest arm instant of all boards, where the
master's condition holds (`TriggerSearch` on the master's input).  Each board takes
that instant onto its own sample grid (first sample at or after it), so board k's n-th
capture and board j's n-th capture are the same event.  A board re-armed without having
triggered (ACQ:STOP, ACQ:START, ACQ:RST, a reconnect) stays in its round; a board that
is never armed again holds the group for good, as a busy output does on hardware.

Nothing runs in the background and no thread ever blocks on the group: a round is
decided when a board asks (STAT?, FILL?, a read, a command), so a board that never
re-arms only makes the others answer WAIT; it cannot stop the emulator from closing.

Instants are kept in ticks of 8 ns (one sample at decimation 1), so converting between
decimations is exact integer arithmetic.

Locking: every board has its own lock and the group has one (`lock`, re-entrant).  The
order is always a board's lock, then the group's: an `Acquisition` takes the group lock
inside its board lock for a whole command; the group never takes a board lock.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

from emulator.signal import BASE_NS, BoardSignal
from emulator.timeline import Clock
from emulator.trigger import LOOKAHEAD_NS, TriggerSearch


@dataclass(frozen=True)
class TriggerSpec:
    """One board's trigger as armed: what `TriggerSearch` needs (source None: never fires)."""

    signal: BoardSignal
    source: str | None          # "IN1", "IN2", "EXT", "NOW"; None for AWG (no generator emulated)
    level: float
    rising: bool
    decimation: int
    clip: tuple[float, float]

    def search(self, arm: int) -> TriggerSearch | None:
        """A search from sample `arm` of this board's grid, None if the source never fires."""
        if self.source is None:
            return None
        return TriggerSearch(self.signal, self.source, self.level, self.rising, self.decimation, arm,
                             clip=self.clip)


def first_sample_at(tick: int, decimation: int) -> int:
    """Index of the first sample at or after `tick` (8 ns units) on the grid of `decimation`."""
    return -(-tick // decimation)


class TriggerGroup:
    """The boards of one emulator triggered together; member 0 is the master."""

    def __init__(self, names: tuple[str, ...], clock: Clock) -> None:
        self.names = tuple(names)
        self.clock = clock
        self.lock = threading.RLock()
        self.rounds = 0                                  # group triggers fired so far
        n = len(self.names)
        self._armed: list[int | None] = [None] * n       # arm instant (ticks) for this round
        self._specs: list[TriggerSpec | None] = [None] * n
        self._pending: list[int | None] = [None] * n     # fired, not yet taken by the board
        self._search: TriggerSearch | None = None

    # ---- what a board tells the group (its caller holds `lock`, after `take`) ----------------
    def arm(self, member: int, tick: int, spec: TriggerSpec) -> None:
        """`member` is armed from `tick` on (again: its round is unchanged, its arm instant moves)."""
        with self.lock:
            self._armed[member] = tick
            self._specs[member] = spec
            self._search = None

    def disarm(self, member: int) -> None:
        """`member` stopped or lost its source: it holds the group until it is armed again."""
        with self.lock:
            if self._armed[member] is not None:
                self._armed[member] = None
                self._search = None

    def take(self, member: int) -> int | None:
        """Bring the group up to now; the instant (ticks) of a trigger `member` has not taken yet."""
        with self.lock:
            self._advance()
            tick, self._pending[member] = self._pending[member], None
            return tick

    # ---- views -----------------------------------------------------------------------------
    def is_armed(self, member: int) -> bool:
        with self.lock:
            return self._armed[member] is not None

    def waiting_for(self) -> tuple[str, ...]:
        """The boards holding the group: not armed for the next round."""
        with self.lock:
            return tuple(name for name, arm in zip(self.names, self._armed) if arm is None)

    # ---- deciding a round ------------------------------------------------------------------------
    def _advance(self) -> None:
        """Fire the round if every board is armed and the trigger is written on all of them."""
        if self._search is None:
            if any(arm is None for arm in self._armed):
                return
            master = self._specs[0]
            assert master is not None
            self._search = master.search(first_sample_at(max(self._armed), master.decimation))
            if self._search is None:
                return
        master = self._specs[0]
        now_ns = self.clock.now_ns()
        period = master.signal.period_ns(master.decimation)
        now = int(now_ns // period)
        ahead = now + 1 if self._search.dense else now + int(LOOKAHEAD_NS / period)
        k = self._search.advance(ahead)
        if k is None:
            return
        tick = k * master.decimation
        written = max(first_sample_at(tick, s.decimation) * s.decimation for s in self._specs)
        if written * BASE_NS <= now_ns:
            self._fire(tick)

    def _fire(self, tick: int) -> None:
        self.rounds += 1
        for member in range(len(self.names)):
            self._pending[member] = tick
            self._armed[member] = None
        self._search = None
