"""The Red Pitaya emulator over real TCP (127.0.0.1), spoken to with raw sockets."""
from __future__ import annotations

import json
import math
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner

from coordinator.topology.model import Component
from emulator import Emulator, EmulatorConfig
from emulator.trigger import TriggerSearch

ROOT = Path(__file__).resolve().parents[1]
STRONG = (Component("uniform", low=0.5, high=0.6),)     # every pulse crosses 0.25 V
TIMEOUT = 5.0


class Scpi:
    """A bare SCPI client: lines out, lines or IEEE 488.2 blocks back."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = socket.create_connection(address, timeout=TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)   # no delayed-ACK stalls
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def send(self, *cmds: str) -> None:
        self.sock.sendall(b"".join(c.encode() + b"\r\n" for c in cmds))

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buf += chunk
        return bool(chunk)

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            assert self._fill(), "connection closed"
        out, self.buf = self.buf.split(b"\r\n", 1)
        return out

    def ask(self, cmd: str) -> str:
        self.send(cmd)
        return self.line().decode()

    def exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            assert self._fill(), "connection closed"
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def block(self, cmd: str) -> bytes:
        self.send(cmd)
        assert self.exact(1) == b"#"
        digits = int(self.exact(1))
        size = int(self.exact(digits))
        data = self.exact(size)
        assert self.exact(2) == b"\r\n"
        return data

    def silent(self, seconds: float = 0.3) -> bool:
        """True if nothing arrives for `seconds`."""
        if self.buf:
            return False
        self.sock.settimeout(seconds)
        try:
            self.buf += self.sock.recv(65536)
        except socket.timeout:
            return True
        finally:
            self.sock.settimeout(TIMEOUT)
        return False

    def wait_for(self, cmd: str, answer: str, seconds: float = TIMEOUT) -> float:
        """Poll `cmd` until it answers `answer`; the time it took."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            if self.ask(cmd) == answer:
                return time.monotonic() - t0
            time.sleep(0.001)
        raise AssertionError(f"{cmd} never answered {answer}")

    def errors(self) -> list[int]:
        out = []
        for _ in range(40):
            code = int(self.ask("SYST:ERR:NEXT?").split(",")[0])
            if code == 0:
                return out
            out.append(code)
        raise AssertionError("error queue does not drain")


@pytest.fixture(scope="module")
def emu():
    with Emulator(EmulatorConfig(boards=("rp1", "rp2"), rate=500.0, amplitude=STRONG)) as e:
        yield e


@pytest.fixture
def rp(emu):
    c = Scpi(emu.scpi_address("rp1"))
    c.send("ACQ:RST")
    yield c
    c.close()


def capture(c: Scpi, trigger: str = "CH1_PE", level: str = "0.25") -> None:
    c.send(f"ACQ:TRig:LEV {level}", "ACQ:START", f"ACQ:TRig {trigger}")
    c.wait_for("ACQ:TRig:STAT?", "TD")
    c.wait_for("ACQ:TRig:FILL?", "1")


# ---- commands, read-backs, errors --------------------------------------------------------
def test_idn_and_every_setting_reads_back(rp):
    make, model, serial, version = rp.ask("*IDN?").split(",")
    assert (make, model) == ("REDPITAYA", "INSTR2025") and version
    for cmd, query, answer in [
        ("ACQ:DEC 64", "ACQ:DEC?", "64"), ("ACQ:DEC:Factor 17", "ACQ:DEC:F?", "17"),
        ("acq:dec 8", "ACQ:SRAT?", " 15625000 Hz"),
        ("ACQ:TRig:DLY 100", "ACQ:TRig:DLY?", "100"), ("ACQ:TR:DLY -200", "acq:trig:dly?", "-200"),
        ("ACQ:TRig:LEV 50 mV", "ACQ:TRig:LEV?", "0.05"), ("ACQ:TRig:LEV 0.125 V", "ACQ:TRIG:LEV?", "0.125"),
        ("ACQ:TRig:HYST 0.01", "ACQ:TRig:HYST?", "0.01"),
        ("ACQ:SOUR1:GAIN HV", "ACQ:SOUR1:GAIN?", "HV"), ("acq:sour2:gain HV", "ACQ:SOUR2:GAIN?", "HV"),
        ("ACQ:DATA:Units RAW", "ACQ:DATA:UNITS?", "RAW"), ("ACQ:DATA:U VOLTS", "ACQ:DATA:Units?", "VOLTS"),
        ("ACQ:DATA:FORMAT BIN", "ACQ:DATA:FORMAT?", "BIN"),
        ("ACQ:DATA:BYTE:ORDER LEND", "ACQ:DATA:BYTE:ORDER?", "LEND"),
        ("ACQ:AVG OFF", "ACQ:AVG?", "OFF"), ("RP:LOGmode OFF", "ACQ:BUF:SIZE?", "16384"),
    ]:
        rp.send(cmd)
        assert rp.ask(query) == answer, (cmd, query)
    rp.send("ACQ:RST")
    assert [rp.ask(q) for q in ("ACQ:DEC?", "ACQ:TRig:DLY?", "ACQ:TRig:LEV?", "ACQ:SOUR1:GAIN?",
                                "ACQ:SOUR2:GAIN?", "ACQ:DATA:Units?", "ACQ:DATA:FORMAT?", "ACQ:TRig:STAT?")] == \
        ["1", "0", "0", "LV", "LV", "VOLTS", "ASCII", "TD"]
    assert rp.ask("*OPC?;*IDN?").startswith("1;REDPITAYA")
    assert rp.ask("SYST:ERR:NEXT?") == '0,"No error"'


def test_unknown_command_is_silent_and_queues_minus_113(rp):
    rp.send("ACQ:NOSUCH?")
    assert rp.silent()
    assert rp.ask("*STB?") == "4"
    assert rp.ask("SYSTem:ERRor:NEXT?") == '-113,"Undefined header"'
    assert rp.ask("SYST:ERR?") == '0,"No error"'
    assert rp.ask("*STB?") == "0"


def test_board_error_codes(rp):
    rp.send("ACQ:DEC 3")
    assert rp.ask("SYST:ERR:NEXT?") == '8891,"*ACQ:DEC Parameter decimation is invalid."'
    assert rp.ask("ACQ:DEC?") == "1"
    rp.send("ACQ:TRig SOMETIMES")
    assert rp.errors() == [8891, -224]
    rp.send("ACQ:DEC")
    assert rp.errors() == [8891, -109]
    rp.send("ACQ:DEC 4,5")
    assert rp.errors() == [-108] and rp.ask("ACQ:DEC?") == "4"
    rp.send("ACQ:SOUR3:GAIN HV")
    assert rp.errors() == [9500]
    rp.send("ACQ:SOUR1:DATA:STArt:N? 5")            # missing size: a failing query says nothing
    assert rp.silent()
    assert rp.errors() == [8891, -109]
    rp.send("ACQ:BOGUS", "ACQ:DEC 5")
    assert rp.ask("SYST:ERR:COUN?") == "2"
    rp.send("*CLS")
    assert rp.ask("*STB?") == "0"


def test_ret_on_error_answers_failing_queries_with_an_empty_line(rp):
    rp.send("RP:RET_ON_ERROR ON")
    try:
        assert rp.ask("ACQ:SOUR1:DATA:STArt:N? 5") == ""
        assert rp.ask("ACQ:SOUR9:GAIN?") == ""
        assert rp.ask("ACQ:DEC?") == "1"
    finally:
        rp.send("RP:RET_ON_ERROR OFF")
    rp.send("ACQ:SOUR9:GAIN?")
    assert rp.silent()


def test_connections_share_the_acquisition_but_not_the_error_queue(emu, rp):
    other = Scpi(emu.scpi_address("rp1"))
    try:
        rp.send("ACQ:DEC 16", "NOPE")
        assert rp.ask("*OPC?") == "1"                  # both done before the other client asks
        assert other.ask("ACQ:DEC?") == "16"
        assert other.ask("SYST:ERR?") == '0,"No error"'
        assert rp.errors() == [-113]
    finally:
        other.close()


# ---- data formats ---------------------------------------------------------------------------
def test_data_in_every_format_and_byte_order(rp):
    rp.send("ACQ:SOUR2:GAIN HV")
    capture(rp, "NOW")
    rp.send("ACQ:DATA:Units RAW")
    ascii_raw = rp.ask("ACQ:SOUR1:DATA:STArt:N? 100,64")
    assert ascii_raw.startswith("{") and ascii_raw.endswith("}")
    raw = np.array([int(v) for v in ascii_raw[1:-1].split(",")])
    assert raw.size == 64
    rp.send("ACQ:DATA:FORMAT BIN")
    for order, fmt in (("BEND", ">i2"), ("LEND", "<i2")):
        rp.send(f"ACQ:DATA:BYTE:ORDER {order}")
        assert np.array_equal(np.frombuffer(rp.block("ACQ:SOUR1:DATA:STArt:N? 100,64"), fmt), raw)
    rp.send("ACQ:DATA:Units VOLTS")
    for order, fmt in (("BEND", ">f4"), ("LEND", "<f4")):
        rp.send(f"ACQ:DATA:BYTE:ORDER {order}")
        volts = np.frombuffer(rp.block("ACQ:SOUR1:DATA:STArt:N? 100,64"), fmt)
        assert np.allclose(volts, raw / 8192, atol=1e-7)
    rp.send("ACQ:DATA:FORMAT ASCII")
    text = rp.ask("ACQ:SOUR1:DATA:STArt:N? 100,64")[1:-1].split(",")
    assert all(len(v.split(".")[1]) == 6 for v in text)
    assert np.allclose([float(v) for v in text], raw / 8192, atol=1e-6)
    # HV input: the same counts mean 20 times the volts; both channels read back
    rp.send("ACQ:DATA:FORMAT BIN", "ACQ:DATA:BYTE:ORDER BEND", "ACQ:DATA:Units RAW")
    raw2 = np.frombuffer(rp.block("ACQ:SOUR2:DATA:STArt:End? 16380,3"), ">i2")
    assert raw2.size == 8                              # wraps around the end of the buffer
    rp.send("ACQ:DATA:Units VOLTS")
    assert np.allclose(np.frombuffer(rp.block("ACQ:SOUR2:DATA:STArt:End? 16380,3"), ">f4"),
                       raw2 * 20 / 8192, atol=1e-6)
    assert len(rp.block("ACQ:SOUR1:DATA?")) == 4 * 16384
    assert len(rp.block("ACQ:SOUR1:DATA:Old:N? 10")) == 40
    assert len(rp.block("ACQ:SOUR1:DATA:LATest:N? 10")) == 40


# ---- timing and trigger semantics -------------------------------------------------------------
def test_trigger_sits_at_tpos_on_a_rising_edge_and_delay_shifts_the_window(rp):
    level = int(0.25 * 8192)
    for delay in (0, 2000):
        rp.send("ACQ:RST", "ACQ:DATA:FORMAT BIN", "ACQ:DATA:Units RAW", f"ACQ:TRig:DLY {delay}")
        capture(rp)
        tpos, wpos = int(rp.ask("ACQ:TPOS?")), int(rp.ask("ACQ:WPOS?"))
        assert wpos == (tpos + 8191 + delay) % 16384
        around = np.frombuffer(rp.block(f"ACQ:SOUR1:DATA:STArt:N? {(tpos - 5) % 16384},10"), ">i2")
        assert np.all(np.abs(around[:4]) < 200)          # baseline and noise before the edge
        assert around[4] < level <= around[5]            # the crossing is at TPOS
        everything = np.frombuffer(rp.block("ACQ:SOUR1:DATA?"), ">i2")
        assert everything[8192 - delay - 1] < level <= everything[8192 - delay]
        assert np.array_equal(everything[8192 - delay - 5: 8192 - delay + 5], around)


def test_fill_waits_for_the_post_trigger_samples_in_real_time(emu, rp):
    board = emu.board("rp1")
    rp.send("ACQ:DEC 1024", "ACQ:TRig:DLY 1000")        # 8.192 us a sample
    period = 8.192e3
    rp.send("ACQ:START")
    w1 = int(rp.ask("ACQ:WPOS?"))
    time.sleep(0.02)
    w2 = int(rp.ask("ACQ:WPOS?"))
    assert 1500 < (w2 - w1) % 16384 < 5000              # about 2441 samples in 20 ms
    rp.send("ACQ:TRig:LEV 0.25", "ACQ:TRig CH1_PE")
    rp.wait_for("ACQ:TRig:STAT?", "TD")
    assert rp.ask("ACQ:TRig:FILL?") == "0"              # 9192 samples take 75 ms
    rp.wait_for("ACQ:TRig:FILL?", "1")
    done_ns = emu.clock.now_ns()
    assert done_ns >= board.last_trigger_ns() + (8192 + 1000 - 1) * period


def test_ext_trigger_and_a_level_changed_while_armed(emu, rp):
    board = emu.board("rp1")
    rp.send("ACQ:START", "ACQ:TRig EXT_PE")
    rp.wait_for("ACQ:TRig:STAT?", "TD")
    t = board.last_trigger_ns()
    events, _ = board.events(0, t / 1e9 + 1)
    assert np.min(np.abs(events - t)) <= 8                 # the discriminator fires on the event itself
    rp.send("ACQ:TRig:LEV 5", "ACQ:START", "ACQ:TRig CH1_PE")
    time.sleep(0.05)
    assert rp.ask("ACQ:TRig:STAT?") == "WAIT"              # 5 V: out of reach of every pulse
    rp.send("ACQ:TRig:LEV 250mV")
    rp.wait_for("ACQ:TRig:STAT?", "TD")
    assert board.last_trigger_ns() > t


def test_trigger_rate_follows_the_pulse_rate():
    rate, span = 2000.0, 5.0
    cfg = EmulatorConfig(rate=rate, seed=3, amplitude=(Component("uniform", low=0.3, high=0.5),))
    emu = Emulator(cfg)                                 # not started: the signal model only
    sig = emu.board("rp1").signal
    k, end, dead, count = 0, int(span * 125e6), 250, 0  # 2 us dead time after each trigger
    while True:
        found = TriggerSearch(sig, "IN1", 0.1, True, 1, k).advance(end)
        if found is None:
            break
        count, k = count + 1, found + dead
    expected = rate * span / (1 + rate * dead * 8e-9)
    assert abs(count - expected) < 5 * math.sqrt(expected)


@pytest.mark.parametrize("shared", [True, False])
def test_boards_share_or_not_the_event_timeline(shared):
    cfg = EmulatorConfig(boards=("a", "b"), rate=50.0, amplitude=STRONG, shared=shared)
    with Emulator(cfg) as emu:
        ta, _ = emu.board("a").events(0, 2)
        tb, _ = emu.board("b").events(0, 2)
        assert np.array_equal(ta, tb) == shared
        clients = [Scpi(emu.scpi_address(n)) for n in ("a", "b")]
        times = []
        for _ in range(5):          # some try arms both boards between the same two events
            for c in clients:
                c.send("ACQ:RST", "ACQ:TRig:LEV 0.25", "ACQ:START", "ACQ:TRig CH1_PE")
            for c in clients:
                c.wait_for("ACQ:TRig:STAT?", "TD")
            times.append([emu.board(n).last_trigger_ns() for n in ("a", "b")])
        for c in clients:
            c.close()
        events_a, _ = emu.board("a").events(0, emu.clock.now_ns() / 1e9 + 1)
        for t_a, t_b in times:                          # a trigger is on the rise of an event
            assert np.min(np.abs(events_a - t_a)) <= 64
            assert (np.min(np.abs(events_a - t_b)) <= 64) == shared
        assert any(t_a == t_b for t_a, t_b in times) == shared


# ---- common trigger ------------------------------------------------------------------------------
def common_emulator() -> Emulator:
    return Emulator(EmulatorConfig(boards=("a", "b"), rate=2000.0, seed=7, amplitude=STRONG, common_trigger=True))


def capture_loop(emu: Emulator, name: str, n: int, pause: float, out: dict) -> None:
    """The documented loop, n times: START, TRig, STAT? until TD, FILL? until 1, read around TPOS."""
    try:
        c = Scpi(emu.scpi_address(name))
        c.send("ACQ:RST", "ACQ:DATA:FORMAT BIN", "ACQ:DATA:Units RAW", "ACQ:TRig:LEV 0.25")
        times, waves = [], []
        for _ in range(n):
            c.send("ACQ:START")
            time.sleep(pause / 2)                       # the pretrigger wait, longer on the slow board
            c.send("ACQ:TRig CH1_PE")
            c.wait_for("ACQ:TRig:STAT?", "TD")
            times.append(emu.board(name).last_trigger_ns())
            c.wait_for("ACQ:TRig:FILL?", "1")
            tpos = int(c.ask("ACQ:TPOS?"))
            waves.append(np.frombuffer(c.block(f"ACQ:SOUR1:DATA:STArt:N? {(tpos - 8) % 16384},32"), ">i2"))
            time.sleep(pause / 2)                       # the slow board takes longer to read out
        c.close()
        out[name] = (times, np.array(waves))
    except Exception as exc:                            # reported by the test thread
        out[name] = exc


def still_waiting(c: Scpi, seconds: float) -> bool:
    """STAT? answers WAIT at every poll for `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if c.ask("ACQ:TRig:STAT?") != "WAIT":
            return False
        time.sleep(0.01)
    return True


@pytest.mark.parametrize("slow", ["a", "b"])          # the master, then the slave, reads out slowly
def test_common_trigger_boards_capture_the_same_events(slow):
    n, level = 20, int(0.25 * 8192)
    with common_emulator() as emu:
        out: dict = {}
        threads = [threading.Thread(target=capture_loop, args=(emu, name, n, 0.02 if name == slow else 0.0, out))
                   for name in ("a", "b")]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=30)
        assert not any(th.is_alive() for th in threads)
        for name in ("a", "b"):
            assert not isinstance(out.get(name), Exception), out.get(name)
        (times_a, waves_a), (times_b, waves_b) = out["a"], out["b"]
        assert times_a == times_b and len(set(times_a)) == n          # the same n events, in order
        assert [emu.board(name).stats["triggers"] for name in ("a", "b")] == [n, n]
        assert emu.trigger_group.rounds == n
        events, _ = emu.board("a").events(0, emu.clock.now_ns() / 1e9 + 1)
        assert all(np.min(np.abs(events - t)) <= 64 for t in times_a)  # each on the rise of a pulse
        assert np.all(waves_a[:, 7] <= level) and np.all(waves_a[:, 8] >= level)  # the master's edge at TPOS
        assert np.all(np.abs(waves_a.astype(int) - waves_b) < 200)     # the slave: same pulse, own noise


def test_common_trigger_a_board_not_armed_holds_the_group():
    with common_emulator() as emu:
        group = emu.trigger_group
        a, b = Scpi(emu.scpi_address("a")), Scpi(emu.scpi_address("b"))
        a.send("ACQ:RST", "ACQ:START", "ACQ:TRig NOW")     # the master alone would fire at once
        b.send("ACQ:RST")
        assert still_waiting(a, 0.3) and group.waiting_for() == ("b",)
        before = emu.clock.now_ns()
        b.send("ACQ:START", "ACQ:TRig CH2_NE")             # a slave's own source only arms it
        for c in (a, b):
            c.wait_for("ACQ:TRig:STAT?", "TD")
        first = emu.board("a").last_trigger_ns()
        assert first == emu.board("b").last_trigger_ns() and first >= before   # at the latest arming
        # the slave waits for the master; stopped, reset and reconnected without a trigger it
        # stays in round 2 (STOP keeps the source register: a START alone would arm it again)
        b.send("ACQ:START", "ACQ:TRig CH1_PE")
        assert still_waiting(b, 0.2) and group.waiting_for() == ("a",)
        b.send("ACQ:STOP")
        assert b.ask("*OPC?") == "1" and group.waiting_for() == ("a", "b")
        b.send("ACQ:RST")
        a.send("ACQ:START", "ACQ:TRig NOW")
        assert still_waiting(a, 0.2) and group.waiting_for() == ("b",)
        b.close()
        b = Scpi(emu.scpi_address("b"))
        b.send("ACQ:START", "ACQ:TRig CH1_PE")
        for c in (a, b):
            c.wait_for("ACQ:TRig:STAT?", "TD")
        second = emu.board("a").last_trigger_ns()
        assert second == emu.board("b").last_trigger_ns() and second > first
        assert group.rounds == 2 and [emu.board(x).stats["triggers"] for x in ("a", "b")] == [2, 2]
        a.send("ACQ:START", "ACQ:TRig NOW")                # left waiting for b: close() still ends it
        assert a.ask("ACQ:TRig:STAT?") == "WAIT"
        a.close()
        b.close()


def test_common_trigger_in_config_cli_and_coordinator_settings():
    from coordinator.emulated import emulator_settings
    from coordinator.topology.model import ControlConfig, EmulatorSettings

    with pytest.raises(ValueError, match="common_trigger"):
        EmulatorConfig(common_trigger="yes")
    assert EmulatorConfig().common_trigger is False and Emulator().trigger_group is None
    topo = SimpleNamespace(emulator=EmulatorSettings(common_trigger=True), emulated_boards=lambda: ["rp1", "rp2"],
                           control=ControlConfig())
    settings = emulator_settings(topo)
    assert settings["common_trigger"] is True
    amplitude = tuple(Component(**c) for c in settings.pop("amplitude"))
    cfg = EmulatorConfig(boards=tuple(settings.pop("boards")), amplitude=amplitude, **settings)
    assert Emulator(cfg).trigger_group.names == ("rp1", "rp2")
    from emulator.cli import main
    assert "--common-trigger" in CliRunner().invoke(main, ["--help"]).output


# ---- MCPHA ---------------------------------------------------------------------------------------
def mcpha_command(sock: socket.socket, code: int, chan: int, value: int) -> None:
    sock.sendall(struct.pack("<Q", code << 56 | chan << 52 | (int(value) & 0xFFFFFFFFFFFFF)))


def recv_exact(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, "connection closed"
        data += chunk
    return bytes(data)


def test_mcpha_acquires_triggered_interleaved_waveforms():
    with Emulator(EmulatorConfig(rate=3000.0, amplitude=STRONG)) as emu:
        sock = socket.create_connection(emu.mcpha_address("rp1"), timeout=TIMEOUT)
        total, pre, level, n = 1024, 100, 1000, 200
        for code, chan, value in ((4, 0, 4), (5, 1, 1), (13, 0, 0), (14, 0, 0), (15, 0, 0), (16, 0, level),
                                  (17, 0, pre), (18, 0, total), (2, 0, 0), (19, 0, 0)):
            mcpha_command(sock, code, chan, value)
        mcpha_command(sock, 11, 0, 0)
        assert len(recv_exact(sock, 36)) == 36
        t0 = time.monotonic()
        mcpha_command(sock, 31, 0, n)
        waves = np.stack([np.frombuffer(recv_exact(sock, total * 4), "<i2").reshape(total, 2) for _ in range(n)])
        elapsed = time.monotonic() - t0
        sock.close()
        in1, in2 = waves[:, :, 0], waves[:, :, 1]
        assert np.all(in1[:, pre - 1] < level) and np.all(in1[:, pre] >= level)   # edge at the pretrigger index
        quiet = np.abs(in1[:, : pre - 2]).mean(axis=1) < 100      # baseline before it, but for pile-up
        assert quiet.mean() > 0.8
        assert np.all(in2[:, pre + 1] < -level)                                     # IN2 negated, same pulse
        assert emu.board("rp1").stats["waveforms"] == n
        assert n / elapsed > 100          # a loose floor; about 1000/s here at this rate


# ---- link and faults ----------------------------------------------------------------------------
def test_bandwidth_and_latency_pace_the_link():
    bandwidth, latency = 2e6, 0.05
    with Emulator(EmulatorConfig(bandwidth=bandwidth, latency=latency)) as emu:
        c = Scpi(emu.scpi_address("rp1"))
        t0 = time.monotonic()
        c.ask("*IDN?")
        assert time.monotonic() - t0 >= latency
        c.send("ACQ:DATA:FORMAT BIN", "ACQ:DATA:Units RAW", "ACQ:START", "ACQ:TRig NOW")
        c.wait_for("ACQ:TRig:FILL?", "1")
        t0 = time.monotonic()
        data = c.block("ACQ:SOUR1:DATA?")
        elapsed = time.monotonic() - t0
        c.close()
        assert len(data) == 32768
        assert elapsed >= (len(data) + 8) * 8 / bandwidth


def test_hang_and_drop_connections(emu):
    board = emu.board("rp2")
    c = Scpi(emu.scpi_address("rp2"))
    board.hang(0.6)
    t0 = time.monotonic()
    c.send("*IDN?")
    assert c.silent(0.3)
    assert c.line().startswith(b"REDPITAYA") and time.monotonic() - t0 >= 0.55
    board.drop_connections()
    c.sock.settimeout(TIMEOUT)
    assert c.sock.recv(10) == b""
    c.close()
    again = Scpi(emu.scpi_address("rp2"))
    assert again.ask("*IDN?").startswith("REDPITAYA")
    again.close()


def test_corrupt_blocks(emu):
    board = emu.board("rp2")
    c = Scpi(emu.scpi_address("rp2"))
    c.send("ACQ:DATA:FORMAT BIN", "ACQ:DATA:Units RAW", "ACQ:START", "ACQ:TRig NOW")
    c.wait_for("ACQ:TRig:FILL?", "1")
    board.corrupt_next_block("bad_header")
    c.send("ACQ:SOUR1:DATA:STArt:N? 0,100")
    assert c.exact(2) == b"#X"
    c.line()
    board.corrupt_next_block("short")
    c.send("ACQ:SOUR1:DATA:STArt:N? 0,100")
    assert c.exact(1) == b"#"
    size = int(c.exact(int(c.exact(1))))
    assert size < 200
    c.exact(size)
    assert len(c.line()) == 200 - size                  # the rest arrives before the line end
    assert c.ask("*IDN?").startswith("REDPITAYA")       # the connection is still usable
    board.corrupt_next_block("truncated")
    c.send("ACQ:SOUR1:DATA:STArt:N? 0,100")
    got = c.buf
    while True:
        chunk = c.sock.recv(65536)
        if not chunk:
            break
        got += chunk
    assert got.startswith(b"#3200") and len(got) < 5 + 200
    c.close()
    with pytest.raises(ValueError, match="corruption kind"):
        board.corrupt_next_block("garbled")


def test_config_is_validated_with_the_field_named():
    for kwargs, field in [({"rate": -1.0}, "rate"), ({"boards": ()}, "boards"),
                          ({"boards": ("a", "a")}, "boards"), ({"scpi_ports": (5000, 5001)}, "scpi_ports"),
                          ({"bandwidth": 0}, "bandwidth"), ({"polarity": "up"}, "polarity"),
                          ({"decay_ns": 0}, "decay_ns"), ({"amplitude": ()}, "amplitude")]:
        with pytest.raises(ValueError, match=field):
            EmulatorConfig(**kwargs)


# ---- command line ---------------------------------------------------------------------------------
def test_cli_serves_until_sigterm(tmp_path):
    ready = tmp_path / "ready.json"
    cmd = [sys.executable, "-m", "emulator", "--board", "a", "--board", "b", "--scpi-port", "0",
           "--mcpha-port", "0", "--ready-file", str(ready)]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.05)
        boards = json.loads(ready.read_text())
        assert set(boards) == {"a", "b"}
        host, port = boards["b"]["scpi"]
        c = Scpi((host, port))
        assert c.ask("*IDN?").startswith("REDPITAYA")
        # a second emulator on a taken port: one line naming host:port, exit status 1
        clash = subprocess.run([sys.executable, "-m", "emulator", "--scpi-port", str(port), "--mcpha-port", "0"],
                               cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
        assert clash.returncode == 1
        assert f"{host}:{port}" in clash.stderr and len(clash.stderr.strip().splitlines()) == 1
        c.close()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
        assert proc.returncode == 0, err
        lines = [json.loads(line) for line in out.splitlines()]
        assert [line["board"] for line in lines] == ["a", "b"]
        assert lines[1]["scpi"] == [host, port]
        with pytest.raises(OSError):
            socket.create_connection((host, port), timeout=1).close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
