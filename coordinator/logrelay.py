"""Node output of a system that serves several runs: one system log, copied into each run's log.

Nodes are launched once, so their stderr goes to one file for the system's life; each run's
`log.txt` must still read as that run's whole story.  A thread copies the lines the nodes add
to the system log into the log of the run in progress (within `interval`), in whole lines.
"""
from __future__ import annotations

import threading
from pathlib import Path


class LogRelay:
    def __init__(self, source: Path, interval: float = 0.2) -> None:
        self.source = source
        self.interval = interval
        self.target: Path | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        source.touch()
        self._pos = source.stat().st_size
        self._thread = threading.Thread(target=self._loop, name="log-relay", daemon=True)
        self._thread.start()

    def switch(self, target: Path | None) -> None:
        """From now on copy into `target` (None: nowhere); what came before goes to the old one."""
        with self._lock:
            self._copy()
            self.target = target

    def flush(self) -> None:
        with self._lock:
            self._copy()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)
        self.switch(None)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.flush()

    def _copy(self) -> None:
        try:
            with open(self.source, "rb") as f:
                f.seek(self._pos)
                data = f.read()
        except OSError:
            return
        end = data.rfind(b"\n") + 1          # whole lines only; the rest comes next time
        if end == 0:
            return
        self._pos += end
        if self.target is not None:
            try:
                with open(self.target, "ab") as out:
                    out.write(data[:end])
            except OSError:
                pass    # the run's folder went away (a full disk is logged by the run itself)
