"""Starting nodes.  Local processes now; ssh, command templates and manual joins (issue 5) plug in here."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from coordinator.procutil import set_pdeathsig

ROLE_MODULES = {"acquisition": "acqnode", "processing": "procnode"}


class LocalLauncher:
    """Each node a child process of the coordinator, in its own session so a terminal Ctrl-C
    reaches only the coordinator (which then stops the run in order), and with a parent-death
    signal so no node outlives a coordinator that was killed."""

    def launch(self, name: str, role: str, control: str, log_path: Path) -> subprocess.Popen:
        return self.spawn([sys.executable, "-m", ROLE_MODULES[role], "--coordinator", control,
                           "--name", name], log_path)

    def spawn(self, argv: list[str], log_path: Path) -> subprocess.Popen:
        """Any helper process of the run (nodes, emulated boards), its output in the run log."""
        with open(log_path, "ab", buffering=0) as logf:
            return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                    start_new_session=True, preexec_fn=set_pdeathsig)
