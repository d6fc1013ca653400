"""The project's SCPI and MCPHA clients and the Red Pitaya sources, against the emulator over
real TCP on 127.0.0.1."""
from __future__ import annotations

import socket
import time

import numpy as np
import pytest

from acqnode.boards.link import BoardTimeout, BoardUnreachable
from acqnode.boards.scpi import ScpiClient, ScpiError
from acqnode.sources.mcpha import McphaFrames
from acqnode.sources.redpitaya import RedPitayaFrames
from coordinator.frames import FLAG_TIME_APPROX
from coordinator.topology.model import (BoardLink, Component, McphaSource, McphaTrigger, RedPitayaSource,
                                        ScpiTrigger, StreamConfig)
from emulator import Emulator, EmulatorConfig

LINE = (Component("gaussian", mean=0.5, sigma=0.01),)   # every pulse well above the trigger level
FAST_LINK = BoardLink(timeout=0.5, retry_interval=0.2, give_up_after=5.0)


def stream(samples: int = 2048, channels: dict | None = None) -> StreamConfig:
    return StreamConfig("pulses", samples, channels or {"IN1": "int16", "IN2": "int16"}, ("rp1",))


@pytest.fixture
def emu():
    with Emulator(EmulatorConfig(boards=("rp1", "rp2"), rate=2000.0, seed=5, amplitude=LINE)) as e:
        yield e


def client(emu, board: str = "rp1") -> ScpiClient:
    host, port = emu.scpi_address(board)
    return ScpiClient(host, port, timeout=0.5).connect()


def read_frames(src, st: StreamConfig, n: int, limit_s: float = 10.0) -> np.ndarray:
    out = np.zeros(n, st.dtype)
    got, deadline = 0, time.monotonic() + limit_s
    while got < n and time.monotonic() < deadline:
        r = src.read(got, out[got:], 0.2)
        assert r.lost == 0, r
        got += r.frames
    assert got == n
    return out


# ---- the SCPI client ---------------------------------------------------------------------
def test_idn_and_settings_read_back(emu):
    with client(emu) as c:
        assert c.query("*IDN?").upper().startswith("REDPITAYA")
        c.write("ACQ:DEC 64")
        c.write("ACQ:TRig:DLY 100")
        c.settle("settings")
        assert c.query_int("ACQ:DEC?") == 64 and c.query_int("ACQ:TRig:DLY?") == 100


def test_unknown_command_is_named_with_the_boards_message(emu):
    with client(emu) as c:
        with pytest.raises(ScpiError) as info:
            c.query("ACQ:NONSENSE?")
        assert info.value.code == -113 and "ACQ:NONSENSE?" in str(info.value)
        assert "Undefined header" in str(info.value)
        assert c.query("*IDN?")          # the connection is still in step


def test_rejected_setting_is_found_by_settle(emu):
    with client(emu) as c:
        c.write("ACQ:DEC 3")
        with pytest.raises(ScpiError) as info:
            c.settle("ACQ:DEC 3")
        assert info.value.code == 8891
        assert c.errors() == []          # settle drained the queue it reported


def test_empty_reply_mode_still_raises(emu):
    with client(emu) as c:
        c.write("RP:RET_ON_ERROR ON")
        with pytest.raises(ScpiError, match="-113"):
            c.query("ACQ:BOGUS?")


def test_unreachable_board_names_the_address():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]          # bound, not listening: connection refused
        with pytest.raises(BoardUnreachable, match=f"127.0.0.1:{port}"):
            ScpiClient("127.0.0.1", port, timeout=0.5).connect()


def test_silent_board_times_out(emu):
    with client(emu) as c:
        emu.board("rp1").hang(1.5)
        with pytest.raises(BoardTimeout, match="does not answer"):
            c.query("*IDN?")


@pytest.mark.parametrize("kind", ["bad_header", "truncated", "short"])
def test_corrupt_blocks_are_rejected(emu, kind):
    from acqnode.boards.link import BoardProtocolError
    with client(emu) as c:
        c.write("ACQ:DATA:FORMAT BIN")
        emu.board("rp1").corrupt_next_block(kind)
        with pytest.raises(BoardProtocolError):
            c.query_block("ACQ:SOUR1:DATA:STArt:N? 0,1024", out=np.empty(1024, np.int16))
        assert not c.link.connected       # out of step: closed, must reconnect
        c.reconnect()
        assert c.query("*IDN?")


# ---- the redpitaya source ----------------------------------------------------------------
@pytest.mark.parametrize("units,fmt,order", [("raw", "bin", "big"), ("raw", "bin", "little"),
                                             ("volts", "bin", "big"), ("raw", "ascii", "big")])
def test_frames_have_the_pulse_at_the_pretrigger_index(emu, units, fmt, order):
    dtype = "int16" if units == "raw" else "float32"
    st = stream(2048, {"IN1": dtype, "IN2": dtype})
    cfg = RedPitayaSource(address="emulator", decimation=8, pretrigger=300, units=units,
                          data_format=fmt, byte_order=order, trigger=ScpiTrigger("IN1", "rising", 0.1),
                          link=FAST_LINK)
    src = RedPitayaFrames(cfg, st, "rp1", emu.scpi_address("rp1"))
    try:
        frames = read_frames(src, st, 3 if fmt == "ascii" else 8)
        level = 0.1 * (8192 if units == "raw" else 1.0)
        for f in frames:
            wave = f["IN1"].astype(float)
            # a pulse may sit in the pretrigger samples (it came before the trigger was armed, as
            # on a real board), but the first rising edge after the samples just before the trigger
            # index is the one that triggered, and it is at that index
            assert wave[295:299].max() < level, "baseline just before the trigger"
            assert wave[300:310].max() >= level, "the rising edge just after the trigger index"
            crossing = 295 + int(np.argmax(wave[295:] >= level))
            assert 299 <= crossing <= 301
        assert list(frames["seq"]) == list(range(len(frames)))
        assert np.all(np.diff(frames["timestamp"].astype(np.int64)) > 0)
        assert src.hardware["decimation"] == 8 and src.hardware["buffer_size"] == 16384
    finally:
        src.close()


def test_long_frames_use_the_trigger_delay(emu):
    st = stream(12000, {"IN1": "int16"})
    cfg = RedPitayaSource(address="emulator", pretrigger=1000, trigger=ScpiTrigger("IN1", "rising", 0.1),
                          link=FAST_LINK)
    src = RedPitayaFrames(cfg, st, "rp1", emu.scpi_address("rp1"))
    try:
        assert src.hardware["trigger_delay"] == 12000 - 1000 - 8192
        f = read_frames(src, st, 2)[0]["IN1"]
        rising = set(np.flatnonzero((f[:-1] < 819) & (f[1:] >= 819)) + 1)   # an earlier pile-up pulse may
        assert rising & {999, 1000, 1001}, sorted(rising)                     # cross too: look for the trigger's
    finally:
        src.close()


def test_rejected_setting_names_the_topology_key(emu):
    cfg = RedPitayaSource(address="emulator", decimation=3, link=FAST_LINK)   # not validated: as if a board refused
    with pytest.raises(ScpiError) as info:
        RedPitayaFrames(cfg, stream(), "rp1", emu.scpi_address("rp1"))
    assert info.value.code == 8891 and "acquisition.rp1.source.decimation" in str(info.value)


def test_outage_is_ridden_out_and_costs_source_error_frames(emu):
    st = stream(1024, {"IN1": "int16"})
    cfg = RedPitayaSource(address="emulator", pretrigger=100, trigger=ScpiTrigger("IN1", "rising", 0.1),
                          link=FAST_LINK)
    src = RedPitayaFrames(cfg, st, "rp1", emu.scpi_address("rp1"))
    try:
        read_frames(src, st, 20)
        emu.board("rp1").hang(2.5)
        out = np.zeros(4, st.dtype)
        lost, causes, deadline = 0, set(), time.monotonic() + 15
        while not lost and time.monotonic() < deadline:
            r = src.read(20, out, 0.2)
            lost += r.lost
            causes.add(r.cause)
        assert lost > 0 and "source_error" in causes
        assert src.session.outages and src.session.outages[0]["seconds"] >= 1.0
        read_frames(src, st, 3)        # and frames flow again
    finally:
        src.close()


def test_corrupt_block_costs_one_frame_recorded_corrupt(emu):
    st = stream(1024, {"IN1": "int16"})
    cfg = RedPitayaSource(address="emulator", pretrigger=100, trigger=ScpiTrigger("IN1", "rising", 0.1),
                          link=FAST_LINK)
    src = RedPitayaFrames(cfg, st, "rp1", emu.scpi_address("rp1"))
    try:
        emu.board("rp1").corrupt_next_block("truncated")
        out = np.zeros(4, st.dtype)
        results = [src.read(0, out, 0.5) for _ in range(3)]
        assert [(r.lost, r.cause) for r in results if r.lost] == [(1, "corrupt")]
        assert src.session.rejected_blocks == 1
        read_frames(src, st, 2)
    finally:
        src.close()


def test_shared_timeline_gives_both_boards_pulses(emu):
    st = stream(1024, {"IN1": "int16"})
    cfg = RedPitayaSource(address="emulator", pretrigger=100, trigger=ScpiTrigger("IN1", "rising", 0.1),
                          link=FAST_LINK)
    for board in ("rp1", "rp2"):
        src = RedPitayaFrames(cfg, st, board, emu.scpi_address(board))
        try:
            f = read_frames(src, st, 2)
            assert (f["IN1"][:, 100:110].max(axis=1) >= 819).all()
        finally:
            src.close()


# ---- the MCPHA source --------------------------------------------------------------------
def test_mcpha_frames_split_the_inputs_and_hold_the_pulse(emu):
    st = stream(1024, {"IN1": "int16", "IN2": "int16"})
    cfg = McphaSource(address="emulator", decimation=8, pretrigger=200, waveforms=16,
                      trigger=McphaTrigger("IN1", "rising", "normal", 800), link=FAST_LINK)
    src = McphaFrames(cfg, st, "rp1", emu.mcpha_address("rp1"))
    try:
        frames = read_frames(src, st, 40)
        assert list(frames["seq"]) == list(range(40))
        assert (frames["flags"] & FLAG_TIME_APPROX).all()
        for f in frames:
            assert f["IN1"][:190].max() < 800 <= f["IN1"][200:215].max()
            assert f["IN2"][200:260].max() > 400          # the same event on the other input
    finally:
        src.close()
