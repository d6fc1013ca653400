"""What the Red Pitaya sources (SCPI, MCPHA) share: the reader's interface for triggered
hardware, and riding out a board that stops answering.

A triggered source is not asked for frames by seq like a simulated one: frames come when
the board triggers. `read(first, out, timeout)` fills what came within `timeout` (so the
reader can look at its commands in between) and says how many seqs after them are lost
and why. A board that stops answering is reconnected every `retry_interval`; the frames
its outage cost are estimated from the trigger rate seen so far and recorded as
`source_error`, so the books show the dead time; after `give_up_after` the source fails
and the run ends by policy.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from acqnode.boards.link import BoardError, BoardProtocolError
from coordinator.topology.model import BoardLink

log = logging.getLogger("acqnode.board")


@dataclass
class Readout:
    frames: int            # out[:frames] hold seqs first .. first+frames-1
    lost: int = 0          # the next `lost` seqs are lost ...
    cause: str = ""        # ... for this reason (source_error, corrupt)


class BoardSession:
    """Connection state of one board: trigger-rate estimate, outages, reconnection."""

    def __init__(self, link: BoardLink, where: str) -> None:
        self.link = link
        self.where = where
        self.new_run()

    def new_run(self) -> None:
        """Counters and outages are per run (the connection is kept between runs)."""
        self.t0 = time.monotonic()
        self.triggers = 0
        self.live_seconds = 0.0          # time the board was answering (for the rate estimate)
        self._live_since = self.t0
        self.outage_since: float | None = None
        self.next_retry = 0.0
        self.outages: list[dict] = []
        self.rejected_blocks = 0
        self.notices: list[str] = []     # for the run record: what the reader passes on as errors

    def rate(self) -> float:
        live = self.live_seconds + (time.monotonic() - self._live_since if self.outage_since is None else 0)
        return self.triggers / live if live > 0 else 0.0

    def failed(self, exc: BoardError) -> Readout:
        """A request failed. Corrupt data costs the one frame; silence starts an outage."""
        if isinstance(exc, BoardProtocolError):
            self.rejected_blocks += 1
            log.warning("%s; frame dropped and recorded as corrupt, reconnecting", exc)
            return Readout(0, 1, "corrupt")
        now = time.monotonic()
        if self.outage_since is None:
            self.outage_since = now
            self.live_seconds += now - self._live_since
            self.next_retry = now + self.link.retry_interval
            log.error("%s; reconnecting every %g s for up to %g s", exc, self.link.retry_interval,
                      self.link.give_up_after)
            self.notices.append(f"{exc}; no frames while it does not answer (reconnecting every "
                                f"{self.link.retry_interval:g} s for up to {self.link.give_up_after:g} s)")
        return Readout(0)

    def due(self) -> bool:
        """In an outage: time for the next reconnection attempt? Raises once it is hopeless."""
        now = time.monotonic()
        assert self.outage_since is not None
        if now - self.outage_since > self.link.give_up_after:
            raise BoardError(f"the {self.where} has not answered for {self.link.give_up_after:g} s "
                             f"(source.link.give_up_after); giving up")
        if now < self.next_retry:
            return False
        self.next_retry = now + self.link.retry_interval
        return True

    def recovered(self) -> Readout:
        """Reconnected and reconfigured: the outage's estimated frames are lost as source_error."""
        lost, lost_s = self._end_outage(ongoing=False)
        log.warning("%s answers again after %.2f s; about %d frames were not acquired (source_error)",
                    self.where, lost_s, lost)
        self.notices.append(f"the {self.where} answers again after {lost_s:.1f} s; about {lost} frames "
                            f"were not acquired (source_error)")
        return Readout(0, lost, "source_error")

    def finish(self, most: int) -> Readout:
        """End of the run: an outage still going on costs its estimated frames (at most `most`)
        as source_error, so the record shows the dead time."""
        if self.outage_since is None:
            return Readout(0)
        lost, lost_s = self._end_outage(ongoing=True, most=most)
        log.error("%s still does not answer at the end of the run (%.1f s); about %d frames were not "
                  "acquired (source_error)", self.where, lost_s, lost)
        return Readout(0, lost, "source_error")

    def _end_outage(self, ongoing: bool, most: int | None = None) -> tuple[int, float]:
        now = time.monotonic()
        assert self.outage_since is not None
        lost_s = now - self.outage_since
        lost = int(round(self.rate() * lost_s))
        lost = lost if most is None else max(0, min(lost, most))
        self.outages.append({"start_s": round(self.outage_since - self.t0, 6), "seconds": round(lost_s, 6),
                             "estimated_frames": lost, "ongoing_at_end": ongoing})
        self.outage_since = None
        self._live_since = now
        return lost, lost_s

    def take_notices(self) -> list[str]:
        out, self.notices = self.notices, []
        return out

    def wait_retry(self, timeout: float) -> None:
        time.sleep(max(0.0, min(timeout, self.next_retry - time.monotonic())))

    def ride_out(self, reconnect: Callable[[], None], timeout: float) -> Readout:
        """One step of an outage: wait for the next attempt, or reconnect and reconfigure."""
        if not self.due():
            self.wait_retry(timeout)
            return Readout(0)
        try:
            reconnect()
        except BoardError as exc:
            log.warning("reconnection failed: %s", exc)
            return Readout(0)
        return self.recovered()

    def report(self) -> dict:
        return {"outages": self.outages, "rejected_blocks": self.rejected_blocks,
                "triggers": self.triggers}


def monotonic_origin(epoch_ns: int) -> int:
    """The time.monotonic_ns() value at the run's wall-clock epoch: boards have no trigger clock
    we can read, so timestamps are host times, and counting them from the coordinator's epoch
    makes the timestamps of several boards (several hosts, synchronised clocks) comparable."""
    return time.monotonic_ns() - (time.time_ns() - int(epoch_ns))


def stamp(out: np.ndarray, first: int, t_ns: np.ndarray | int, flags: int = 0) -> None:
    """Header of records read from a board (seq, trigger timestamp, flags)."""
    n = len(out)
    out["seq"] = np.arange(first, first + n, dtype=np.uint64)
    out["timestamp"] = t_ns
    out["flags"] = flags
    out["reserved"] = 0
