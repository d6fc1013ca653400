"""Process helpers: children that die with their parent, orderly termination."""
from __future__ import annotations

import os
import signal
import subprocess
import time


#: What the kernel sends a node when the coordinator that started it dies.  A signal of its
#: own, so the node tells it from a request to stop (SIGTERM, SIGINT): it then ends the run
#: by itself and keeps its data (coordinator/noderuntime.py).  getppid() cannot tell: the
#: signal comes when the coordinator's launching thread ends, maybe before the process does.
PARENT_DIED = signal.SIGUSR1
#: Set by the launcher for the nodes it starts: such a node asks for PARENT_DIED itself when its
#: parent dies (a wrapper like sh or ip netns exec dies with the coordinator).  Not set for a
#: node an operator starts by hand, which must not end when the operator's shell does.
PARENT_DEATH_ENV = "DAQ_PARENT_DEATH"


def set_pdeathsig(sig: int = signal.SIGTERM) -> None:
    """Linux: have the kernel send `sig` to this child when its parent dies (no orphans after
    kill -9).  Used as `preexec_fn`; does nothing where prctl is unavailable.
    """
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, int(sig))  # PR_SET_PDEATHSIG
    except Exception:
        pass


def terminate(procs: list[subprocess.Popen], grace: float = 3.0) -> None:
    """Wait up to `grace` s for processes to exit, then SIGTERM, then SIGKILL."""
    deadline = time.monotonic() + grace
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        alive = [p for p in procs if p.poll() is None]
        if not alive:
            return
        if sig is not None:
            for p in alive:
                try:
                    os.kill(p.pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 2.0
        for p in alive:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass


def resident_bytes(pid: int | str = "self") -> tuple[int, int]:
    """(resident, resident shared) bytes of a process: one small read of /proc/<pid>/statm,
    cheap enough for every stats message (no psutil); (0, 0) where it cannot be read."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            pages = f.read().split()
        page = os.sysconf("SC_PAGE_SIZE")
        return int(pages[1]) * page, int(pages[2]) * page
    except (OSError, ValueError, IndexError):
        return 0, 0
