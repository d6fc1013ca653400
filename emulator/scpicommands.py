"""The SCPI commands the emulator answers, with the board's read-backs and error codes.

Each entry is (pattern, handler, most parameters).  A handler gets the connection's
`Session` and the `Call`, runs with the board's lock held and returns the reply: a
string, `Data` (samples, sent in the connection's format and the board's units) or None.
It raises `Fail` with the errors the board would queue.  Quirks kept on purpose, because
clients meet them on real boards: *RST changes nothing; a bad ACQ:DATA:FORMAT word fails
without queueing an error; ACQ:TRig:DLY without a value sets 0; there is no ACQ:TRig?.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

from emulator.acquisition import BUFFER, SOURCES
from emulator.scpiparse import (Call, Fail, format_float, rp_critical, rp_error, take_bool, take_choice,
                                take_int, take_volts)

if TYPE_CHECKING:
    from emulator.scpi import Session

IDN = "REDPITAYA,INSTR2025,,01-21"
BOARD_NAME = "STEMlab 125-14 v1.0"
DECIMATIONS = tuple(1 << i for i in range(17))


@dataclass
class Data:
    """Samples of one input as RAW counts, with the gain that converts them to volts."""

    counts: np.ndarray
    gain: str


Handler = Callable[["Session", Call], "str | Data | None"]


def _channel(s: "Session", c: Call) -> int:
    n = c.nums[0] if c.nums else 1
    if n not in (1, 2):
        raise rp_critical(c.header, "Invalid channel number", 0)
    return n - 1


# ---- acquisition control and settings ----------------------------------------------------
def acq_start(s: "Session", c: Call) -> None:
    s.acq.start()


def acq_stop(s: "Session", c: Call) -> None:
    s.acq.stop()


def acq_reset(s: "Session", c: Call) -> None:
    s.acq.reset()
    s.binary = False


def set_decimation(s: "Session", c: Call) -> None:
    value = take_int(c)
    if value not in DECIMATIONS:
        raise rp_error(c.header, "Parameter decimation is invalid.")
    s.acq.settings.decimation = value


def set_decimation_factor(s: "Session", c: Call) -> None:
    value = take_int(c)
    if not (value in DECIMATIONS[:5] or 17 <= value <= 65536):
        raise rp_critical(c.header, "Failed to set decimation factor: Value out of range.")
    s.acq.settings.decimation = value


def sample_rate(s: "Session", c: Call) -> str:
    return "%9.0f Hz" % (125e6 / s.acq.settings.decimation)


def set_averaging(s: "Session", c: Call) -> None:
    s.acq.settings.averaging = take_bool(c)


def set_trigger(s: "Session", c: Call) -> None:
    s.acq.set_source(take_choice(c, SOURCES))


def set_delay(s: "Session", c: Call) -> None:
    value = take_int(c, minimum=None) if c.params else 0
    if value < -8192:
        raise rp_critical(c.header, "Failed to set trigger delay: Value out of range.")
    s.acq.settings.delay = value


def set_delay_ns(s: "Session", c: Call) -> None:
    value = take_int(c, minimum=None) if c.params else 0
    if value < -8192 * s.acq.signal.period_ns(s.acq.settings.decimation):
        raise rp_critical(c.header, "Failed to set trigger delay in ns: Value out of range.")
    s.acq.set_delay_ns(value)


def set_hysteresis(s: "Session", c: Call) -> None:
    s.acq.settings.hysteresis = take_volts(c)


def set_level(s: "Session", c: Call) -> None:
    s.acq.settings.level = take_volts(c)
    s.acq.retune()


def set_gain(s: "Session", c: Call) -> None:
    ch = _channel(s, c)
    s.acq.gain[ch] = take_choice(c, ("LV", "HV"))
    s.acq.retune()


def set_units(s: "Session", c: Call) -> None:
    s.acq.settings.units = take_choice(c, ("RAW", "VOLTS"))


def set_format(s: "Session", c: Call) -> None:
    text = c.take()
    if text is None:
        raise rp_error(c.header, "Missing first parameter.", -109)
    word = text.upper()
    if word and "BIN".startswith(word):        # the server compares only len(word) letters
        s.binary = True
    elif word and "ASCII".startswith(word):
        s.binary = False
    else:
        raise Fail()                           # logged as info on the board: nothing queued


def set_byte_order(s: "Session", c: Call) -> None:
    s.big_endian = take_choice(c, ("BEND", "LEND")) == "BEND"


def trigger_position(s: "Session", c: Call) -> str:
    s.acq.update()
    return str(s.acq.tpos)


# ---- data --------------------------------------------------------------------------------
def _size(c: Call, value: int) -> int:
    if not 0 < value <= BUFFER:
        raise rp_critical(c.header, "Failed to get data: Value out of range.")
    return value


def _position(c: Call, value: int) -> int:
    if not 0 <= value < BUFFER:
        raise rp_critical(c.header, "Failed to get data: Value out of range.")
    return value


def data_all(s: "Session", c: Call) -> Data:
    ch = _channel(s, c)
    return Data(s.acq.read(ch, s.acq.oldest(), BUFFER), s.acq.gain[ch])


def data_start_n(s: "Session", c: Call) -> Data:
    ch = _channel(s, c)
    start = _position(c, take_int(c, "Missing START parameter."))
    n = _size(c, take_int(c, "Missing SIZE parameter."))
    return Data(s.acq.read(ch, start, n), s.acq.gain[ch])


def data_start_end(s: "Session", c: Call) -> Data:
    ch = _channel(s, c)
    start = _position(c, take_int(c, "Unable to read START parameter."))
    end = _position(c, take_int(c, "Unable to read END parameter."))
    return Data(s.acq.read(ch, start, (end + BUFFER - start) % BUFFER + 1), s.acq.gain[ch])


def data_oldest_n(s: "Session", c: Call) -> Data:
    ch = _channel(s, c)
    n = _size(c, take_int(c, "Missing SIZE parameter."))
    return Data(s.acq.read(ch, s.acq.oldest(), n), s.acq.gain[ch])


def data_latest_n(s: "Session", c: Call) -> Data:
    ch = _channel(s, c)
    n = _size(c, take_int(c))
    return Data(s.acq.read(ch, (s.acq.write_pointer() - n + 1) % BUFFER, n), s.acq.gain[ch])


def data_trigger(s: "Session", c: Call) -> Data:
    ch = _channel(s, c)
    n = take_int(c, "Missing Size parameter.")
    mode = take_choice(c, ("PRE_TRIG", "POST_TRIG", "PRE_POST_TRIG"), "Missing trigger mode parameter.")
    tpos = s.acq.tpos
    start = tpos if mode == "POST_TRIG" else (tpos - n) % BUFFER
    size = _size(c, 2 * n + 1 if mode == "PRE_POST_TRIG" else n + 1)
    return Data(s.acq.read(ch, start, size), s.acq.gain[ch])


# ---- common and system commands ------------------------------------------------------------
def error_next(s: "Session", c: Call) -> str:
    code, text = s.errors.pop()
    return '%d,"%s"' % (code, text.replace('"', '""'))


def clear_status(s: "Session", c: Call) -> None:
    s.errors.clear()


def set_ret_on_error(s: "Session", c: Call) -> None:
    s.board.ret_on_error = take_bool(c)


def set_log_mode(s: "Session", c: Call) -> None:
    take_choice(c, ("OFF", "CONSOLE", "SYSLOG"))


def _const(text: str) -> Handler:
    return lambda s, c: text


def _nothing(s: "Session", c: Call) -> None:
    return None


def _store(name: str) -> Handler:
    def handler(s: "Session", c: Call) -> None:
        s.registers[name] = take_int(c)
    return handler


def _recall(name: str) -> Handler:
    return lambda s, c: str(s.registers.get(name, 0))


COMMANDS: list[tuple[str, Handler, int]] = [
    ("*IDN?", _const(IDN), 0),
    ("*RST", _nothing, 0),
    ("*CLS", clear_status, 0),
    ("*STB?", lambda s, c: str(s.errors.status_byte()), 0),
    ("*ESR?", lambda s, c: str(s.errors.take_esr()), 0),
    ("*ESE", _store("ese"), 1),
    ("*ESE?", _recall("ese"), 0),
    ("*SRE", _store("sre"), 1),
    ("*SRE?", _recall("sre"), 0),
    ("*OPC", _nothing, 0),
    ("*OPC?", _const("1"), 0),
    ("*WAI", _nothing, 0),
    ("*TST?", _const("0"), 0),
    ("SYSTem:ERRor[:NEXT]?", error_next, 0),
    ("SYSTem:ERRor:COUNt?", lambda s, c: str(s.errors.count()), 0),
    ("SYSTem:BRD:Name?", _const(BOARD_NAME), 0),
    ("RP:RET_ON_ERROR", set_ret_on_error, 1),
    ("RP:LOGmode", set_log_mode, 1),
    ("ACQ:START", acq_start, 0),
    ("ACQ:STOP", acq_stop, 0),
    ("ACQ:RST", acq_reset, 0),
    ("ACQ:DEC", set_decimation, 1),
    ("ACQ:DEC?", lambda s, c: str(s.acq.settings.decimation), 0),
    ("ACQ:DEC:Factor", set_decimation_factor, 1),
    ("ACQ:DEC:Factor?", lambda s, c: str(s.acq.settings.decimation), 0),
    ("ACQ:SRATe?", sample_rate, 0),
    ("ACQ:AVG", set_averaging, 1),
    ("ACQ:AVG?", lambda s, c: "ON" if s.acq.settings.averaging else "OFF", 0),
    ("ACQ:TRig", set_trigger, 1),
    ("ACQ:TRig:STAT?", lambda s, c: s.acq.trigger_state(), 0),
    ("ACQ:TRig:FILL?", lambda s, c: "1" if s.acq.filled() else "0", 0),
    ("ACQ:TRig:DLY", set_delay, 1),
    ("ACQ:TRig:DLY?", lambda s, c: str(s.acq.settings.delay), 0),
    ("ACQ:TRig:DLY:NS", set_delay_ns, 1),
    ("ACQ:TRig:DLY:NS?", lambda s, c: str(s.acq.delay_ns()), 0),
    ("ACQ:TRig:HYST", set_hysteresis, 1),
    ("ACQ:TRig:HYST?", lambda s, c: format_float(s.acq.settings.hysteresis), 0),
    ("ACQ:TRig:LEV", set_level, 1),
    ("ACQ:TRig:LEV?", lambda s, c: format_float(s.acq.settings.level), 0),
    ("ACQ:SOUR#:GAIN", set_gain, 1),
    ("ACQ:SOUR#:GAIN?", lambda s, c: s.acq.gain[_channel(s, c)], 0),
    ("ACQ:WPOS?", lambda s, c: str(s.acq.write_pointer()), 0),
    ("ACQ:TPOS?", trigger_position, 0),
    ("ACQ:DATA:Units", set_units, 1),
    ("ACQ:DATA:Units?", lambda s, c: s.acq.settings.units, 0),
    ("ACQ:DATA:FORMAT", set_format, 1),
    ("ACQ:DATA:FORMAT?", lambda s, c: "BIN" if s.binary else "ASCII", 0),
    ("ACQ:DATA:BYTE:ORDER", set_byte_order, 1),
    ("ACQ:DATA:BYTE:ORDER?", lambda s, c: "BEND" if s.big_endian else "LEND", 0),
    ("ACQ:BUF:SIZE?", _const(str(BUFFER)), 0),
    ("ACQ:SOUR#:DATA?", data_all, 0),
    ("ACQ:SOUR#:DATA:STArt:N?", data_start_n, 2),
    ("ACQ:SOUR#:DATA:STArt:End?", data_start_end, 2),
    ("ACQ:SOUR#:DATA:Old:N?", data_oldest_n, 1),
    ("ACQ:SOUR#:DATA:LATest:N?", data_latest_n, 1),
    ("ACQ:SOUR#:DATA:TRig?", data_trigger, 2),
]
