"""Run state machine (contract): every transition in one table, history kept for run.json."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

STATES = ("idle", "configured", "running", "paused", "stopping", "stopped", "fault")

#: (state, event) -> next state.  Anything not listed is refused.
TRANSITIONS: dict[tuple[str, str], str] = {
    ("idle", "configure"): "configured",
    ("configured", "start"): "running",
    ("running", "pause"): "paused",
    ("paused", "resume"): "running",
    ("configured", "stop"): "stopping",
    ("running", "stop"): "stopping",
    ("paused", "stop"): "stopping",
    ("stopping", "drained"): "stopped",
    **{(s, "fault"): "fault" for s in ("idle", "configured", "running", "paused", "stopping")},
}


class InvalidTransition(RuntimeError):
    pass


@dataclass
class StateMachine:
    state: str = "idle"
    history: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.history.append({"state": self.state, "event": None, "time": time.time(), "reason": ""})

    def can(self, event: str) -> bool:
        return (self.state, event) in TRANSITIONS

    def fire(self, event: str, reason: str = "") -> str:
        try:
            nxt = TRANSITIONS[(self.state, event)]
        except KeyError:
            raise InvalidTransition(f"event {event!r} is not allowed in state {self.state!r}") from None
        self.state = nxt
        self.history.append({"state": nxt, "event": event, "time": time.time(), "reason": reason})
        return nxt
