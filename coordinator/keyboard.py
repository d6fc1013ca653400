"""Single keys typed in the live dashboard, turned into coordinator commands.

The terminal is put in cbreak mode (keys arrive one by one, not echoed; Ctrl-C still raises
SIGINT) only while a run is shown, and put back as it was on `close()` and at interpreter
exit, so a crash never leaves the operator's shell without echo.  Keys are read without
blocking from the coordinator's own loop: no thread, and at most one read per refresh.

    p   pause / resume the sources
    s   stop (frames in flight are drained and saved)
    a   abort: asks for a second `a` within CONFIRM_S, since frames in flight become missing
"""
from __future__ import annotations

import atexit
import os
import select
import sys
import time
from typing import Callable, TextIO

CONFIRM_S = 3.0

#: key -> coordinator event (see `Coordinator._on_event`)
KEYS = {"p": "toggle_pause", "s": "stop", "a": "abort"}
HELP = "keys: p pause/resume · s stop · a abort"


class Keyboard:
    """Keys of `stream` (stdin) when it is a terminal; does nothing otherwise."""

    def __init__(self, stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.fd: int | None = None
        self._saved: list | None = None
        self._abort_asked = float("-inf")
        stream = sys.stdin if stream is None else stream
        try:
            fd = stream.fileno()
        except (AttributeError, ValueError, OSError):
            return
        if not os.isatty(fd):
            return
        import termios
        import tty
        try:
            self._saved = termios.tcgetattr(fd)
            tty.setcbreak(fd, termios.TCSANOW)
        except termios.error:
            return
        self.fd = fd
        atexit.register(self.close)

    @property
    def active(self) -> bool:
        return self.fd is not None

    @property
    def hint(self) -> str:
        """What the dashboard shows under its header."""
        if not self.active:
            return ""
        if self.clock() - self._abort_asked < CONFIRM_S:
            return "press a again to abort (frames in flight are then listed as missing)"
        return HELP

    def events(self) -> list[str]:
        """Commands typed since the last call."""
        if self.fd is None:
            return []
        out: list[str] = []
        while select.select([self.fd], [], [], 0)[0]:
            data = os.read(self.fd, 64)
            if not data:            # the terminal went away
                self.close()
                break
            for ch in data.decode(errors="replace").lower():
                event = KEYS.get(ch)
                if event == "abort":
                    now = self.clock()
                    if now - self._abort_asked >= CONFIRM_S:
                        self._abort_asked = now
                        continue
                    self._abort_asked = float("-inf")
                if event is not None:
                    out.append(event)
        return out

    def close(self) -> None:
        if self.fd is not None and self._saved is not None:
            import termios
            try:
                termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
            except termios.error:
                pass
        self.fd = None
        atexit.unregister(self.close)
