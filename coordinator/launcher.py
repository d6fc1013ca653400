"""Starting a run's nodes on their hosts: a local process, ssh, a command template, or an
operator who starts the node by hand (`manual`).

Whatever the way, a node is started with only the coordinator's control address and its
name; everything else comes in `configure`.  The node's output goes to the run log (for
ssh and templates: whatever the wrapper passes back).  A node whose wrapper process dies,
or that stops answering, is noticed by the coordinator's liveness checks; a node on
another host whose coordinator goes silent stops by itself, so none outlives a run.
"""
from __future__ import annotations

import logging
import functools
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from coordinator.procutil import PARENT_DEATH_ENV, PARENT_DIED, set_pdeathsig

log = logging.getLogger(__name__)

ROLE_MODULES = {"acquisition": "acqnode", "processing": "procnode"}
ROLE_COMMANDS = {"acquisition": "daq-acqnode", "processing": "daq-procnode"}
#: ssh options: never prompt (a run must not hang on a password), give up on a dead host fast.
SSH_OPTIONS = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=5", "-o", "ServerAliveInterval=2",
               "-o", "ServerAliveCountMax=3"]


def node_argv(role: str, name: str, control: str, python: str | None, keys: Path | None = None) -> list[str]:
    """The command line that starts a node: `python -m acqnode ...` with a known interpreter,
    else the installed command (`daq-acqnode ...`) found on the host's PATH; with CURVE, the
    key folder (the same path on every host)."""
    head = [python, "-m", ROLE_MODULES[role]] if python else [ROLE_COMMANDS[role]]
    return [*head, "--coordinator", control, "--name", name, *(["--keys", str(keys)] if keys else [])]


class Launcher:
    """Starts every process of a run.  Local processes run in their own session (a terminal
    Ctrl-C reaches only the coordinator, which stops the run in order) with a parent-death
    signal (none outlives a coordinator that was killed)."""

    def __init__(self, hosts: dict[str, Any] | None = None, keys: Path | None = None) -> None:
        self.hosts = hosts or {}
        self.keys = keys

    def launch(self, name: str, role: str, host: str, control: str, log_path: Path) -> subprocess.Popen | None:
        """Start node `name` on `host`; None for a manual host (the operator starts it)."""
        cfg = self.hosts.get(host)
        how = cfg.launch if cfg is not None else "local"
        if how == "local":
            return self.spawn(node_argv(role, name, control, sys.executable, self.keys), log_path, PARENT_DIED)
        if how == "manual":
            log.warning("host %s: start node %s there by hand: %s", host, name,
                        shlex.join(node_argv(role, name, control, cfg.python, self.keys)))
            return None
        if how == "ssh":
            remote = shlex.join(node_argv(role, name, control, cfg.python, self.keys))
            return self.spawn(["ssh", *SSH_OPTIONS, cfg.address, remote], log_path, PARENT_DIED)
        command = shlex.join(node_argv(role, name, control, cfg.python or sys.executable, self.keys))
        return self.spawn(["/bin/sh", "-c", render_template(how, host, cfg.address, command)], log_path,
                          PARENT_DIED)

    def fetch(self, host: str, path: str, dest: Path, timeout: float = 600.0) -> str:
        """Copy file `path` of `host` to `dest` by running `cat` there the way nodes are started
        there (ssh, template); returns "" on success, else why not."""
        cfg = self.hosts.get(host)
        how = cfg.launch if cfg is not None else "local"
        cat = shlex.join(["cat", "--", path])
        if how in ("local", "manual"):
            return f"not visible here and host {host} is started {how}"
        argv = (["ssh", *SSH_OPTIONS, cfg.address, cat] if how == "ssh"
                else ["/bin/sh", "-c", render_template(how, host, cfg.address, cat)])
        tmp = dest.with_name(dest.name + ".part")
        try:
            with open(tmp, "wb") as out:
                res = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.PIPE,
                                     timeout=timeout)
            if res.returncode != 0:
                return f"{argv[0]} exited with {res.returncode}: {res.stderr.decode(errors='replace').strip()[-300:]}"
            tmp.replace(dest)
            return ""
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"{type(exc).__name__}: {exc}"
        finally:
            tmp.unlink(missing_ok=True)

    def spawn(self, argv: list[str], log_path: Path, death_signal: int = signal.SIGTERM) -> subprocess.Popen:
        """Any process of the run (nodes, their wrappers, emulated boards), output in the run log;
        `death_signal` is what it gets if the coordinator dies."""
        # a node behind a wrapper (sh, ip netns exec) asks for the signal itself, relative to the
        # wrapper: the kernel clears it in the wrapper's children (noderuntime.NodeRuntime.serve)
        env = {**os.environ, PARENT_DEATH_ENV: "1"} if death_signal == PARENT_DIED else None
        with open(log_path, "ab", buffering=0) as logf:
            return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                    start_new_session=True, env=env,
                                    preexec_fn=functools.partial(set_pdeathsig, death_signal))


def render_template(template: str, host: str, address: str, command: str) -> str:
    """A host's launch template with its fields filled: {host} and {address} shell-quoted,
    {command} the node's command line (already quoted, one shell word list)."""
    return template.format(host=shlex.quote(host), address=shlex.quote(address), command=command)
