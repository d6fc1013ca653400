"""Keys of the live dashboard: p pauses and resumes, s stops, a (twice) aborts.

The end-to-end tests run `daq-coordinator run` on a real pseudo-terminal, as an operator's
shell would, and type the keys into it."""
from __future__ import annotations

import fcntl
import json
import os
import pty
import struct
import subprocess
import termios
import threading
import time
from pathlib import Path

import yaml
from conftest import coordinator_cmd, small_topology, write_topology

from coordinator.keyboard import CONFIRM_S, HELP, Keyboard


def _pty() -> tuple[int, int]:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    return master, slave


def test_keys_become_commands_and_abort_asks_twice() -> None:
    master, slave = _pty()
    clock = [100.0]
    before = termios.tcgetattr(slave)
    with os.fdopen(slave, "r", closefd=False) as stream:
        kb = Keyboard(stream, clock=lambda: clock[0])
        try:
            assert kb.active and kb.hint == HELP
            assert not termios.tcgetattr(slave)[3] & termios.ECHO, "keys must not be echoed"
            os.write(master, b"pxS")
            assert kb.events() == ["toggle_pause", "stop"]
            os.write(master, b"a")
            assert kb.events() == [] and "again" in kb.hint
            clock[0] += CONFIRM_S + 0.1          # too late: the second `a` asks again
            os.write(master, b"a")
            assert kb.events() == [] and "again" in kb.hint
            clock[0] += 1.0
            os.write(master, b"a")
            assert kb.events() == ["abort"] and kb.hint == HELP
            assert kb.events() == []
        finally:
            kb.close()
    assert termios.tcgetattr(slave) == before, "the terminal is put back as it was"
    os.close(master)
    os.close(slave)


def test_no_terminal_no_keys() -> None:
    r, w = os.pipe()
    with os.fdopen(r, "r") as stream:
        kb = Keyboard(stream)
        os.write(w, b"s")
        assert not kb.active and kb.events() == [] and kb.hint == ""
    os.close(w)


class Screen:
    """`daq-coordinator run|batch PATH` on a pseudo-terminal; a thread keeps reading what it draws."""

    def __init__(self, path: Path, command: str = "run") -> None:
        master, slave = _pty()
        self.master = master
        env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"}
        self.proc = subprocess.Popen(coordinator_cmd(command, str(path)), cwd=path.parent,
                                     stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True)
        os.close(slave)
        self.text = ""
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:         # the child closed the terminal
                return
            if not data:
                return
            with self._lock:
                self.text += data.decode(errors="replace")

    def wait_for(self, needle: str, since: int = 0, timeout: float = 30) -> int:
        """Until `needle` is drawn after offset `since`; returns the offset after it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                at = self.text.find(needle, since)
            if at >= 0:
                return at + len(needle)
            assert self.proc.poll() is None, f"the coordinator exited ({self.proc.returncode}):\n{self.text[-2000:]}"
            time.sleep(0.05)
        raise AssertionError(f"{needle!r} was not drawn within {timeout} s:\n{self.text[-2000:]}")

    def type(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def finish(self, timeout: float = 60) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._reader.join(timeout=5)
            os.close(self.master)


def _topology(tmp_path: Path) -> Path:
    topo = small_topology(**{"run.frames": None, "run.duration": 120.0,
                             "acquisition.synth1.source.rate": 500.0})
    return write_topology(tmp_path, topo)


def _record(tmp_path: Path) -> dict:
    (path,) = (tmp_path / "runs").glob("*/run.json")
    return json.loads(path.read_text())


def test_pause_resume_and_stop_from_the_keyboard(tmp_path: Path, clean_system) -> None:
    screen = Screen(_topology(tmp_path))
    at = screen.wait_for("keys: p pause")
    screen.type("p")
    at = screen.wait_for("paused", at)
    time.sleep(1.0)
    screen.type("p")
    at = screen.wait_for("running", at)
    screen.type("s")
    assert screen.finish() == 0, screen.text[-2000:]
    rec = _record(tmp_path)
    assert rec["stop_reason"] == "stopped" and rec["result"] == "completed"
    assert rec["pauses"]["count"] == 1 and rec["pauses"]["seconds"] >= 0.9
    assert rec["books"]["balanced"]


def test_abort_from_the_keyboard_needs_a_second_a(tmp_path: Path, clean_system) -> None:
    screen = Screen(_topology(tmp_path))
    at = screen.wait_for("keys: p pause")
    screen.type("a")
    at = screen.wait_for("press a again", at)
    screen.type("a")
    code = screen.finish()
    rec = _record(tmp_path)
    assert rec["stop_reason"] == "abort", (code, rec["stop_reason"])
    assert code == 130 and rec["result"] == "interrupted" and rec["books"]["balanced"]


def test_batch_shows_each_run_and_keys_act_on_the_run_shown(tmp_path: Path, clean_system) -> None:
    """`s` in a batch stops the run on the screen; the batch goes on with the next one, which
    gets a dashboard of its own."""
    _topology(tmp_path)
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump({"topology": "topo.yaml", "runs": [
        {"name": "long", "duration": 120.0, "frames": 0}, {"name": "short", "frames": 1000}]}))
    screen = Screen(plan, "batch")
    at = screen.wait_for("t run 1")
    at = screen.wait_for("keys: p pause", at)
    screen.type("s")
    at = screen.wait_for("long: completed (stopped)", at)
    at = screen.wait_for("t run 2", at)
    screen.wait_for("short: completed (frames)", at)
    assert screen.finish() == 0, screen.text[-2000:]
    rows = json.loads((tmp_path / "runs" / "batch-plan.json").read_text())["runs"]
    assert sorted(r["stop_reason"] for r in rows.values()) == ["frames", "stopped"], rows
