"""The SCPI server of one board (the board's port 5000): sessions, error queues, replies.

Wire format as the board's server: a command ends in "\\r\\n" ("\\n" alone is accepted
too); ';' separates commands of one line; the replies of one line are joined by ';' and
end in "\\r\\n".  Samples come as ASCII ``{v1,v2,...}`` (RAW integers or VOLTS with six
decimals) or, with ACQ:DATA:FORMAT BIN, as an IEEE 488.2 definite-length block
``#<digits><length><bytes>`` (int16 RAW or float32 VOLTS, big-endian unless
ACQ:DATA:BYTE:ORDER LEND) followed by "\\r\\n".

Errors: an unknown command queues -113 and sends nothing; a failing command queues what
the board queues (`emulator.scpiparse`) and a failing query sends nothing, or an empty
line with RP:RET_ON_ERROR ON.  As on the board, the error queues, the data format and
the byte order belong to the connection; the acquisition, units and RET_ON_ERROR to the
board.
"""
from __future__ import annotations

import socket
import threading
from collections import deque

from emulator.acquisition import to_volts
from emulator.board import Board
from emulator.scpicommands import COMMANDS, Data
from emulator.scpiparse import SCPI_TEXT, Call, Fail, Pattern, split_message

_TABLE = [(Pattern.compile(p), handler, most) for p, handler, most in COMMANDS]
SCPI_QUEUE = 16
ESR_EXECUTION, ESR_COMMAND = 0x10, 0x20


class ErrorQueue:
    """The parser's queue (16 deep, -350 on overflow) and the Red Pitaya handlers' queue."""

    def __init__(self) -> None:
        self.rp: deque[tuple[int, str]] = deque()
        self.scpi: deque[tuple[int, str]] = deque()
        self.esr = 0

    def push(self, queue: str, code: int, text: str) -> None:
        self.esr |= ESR_COMMAND if -200 < code <= -100 else ESR_EXECUTION
        if queue == "rp":
            self.rp.append((code, text))
        elif len(self.scpi) < SCPI_QUEUE:
            self.scpi.append((code, text))
        else:
            self.scpi[-1] = (-350, SCPI_TEXT[-350])

    def pop(self) -> tuple[int, str]:
        """Next error, the handlers' queue first (as SYST:ERR:NEXT? on the board)."""
        for queue in (self.rp, self.scpi):
            if queue:
                return queue.popleft()
        return 0, "No error"

    def count(self) -> int:
        return len(self.rp) + len(self.scpi)

    def clear(self) -> None:
        self.rp.clear()
        self.scpi.clear()
        self.esr = 0

    def status_byte(self) -> int:
        """*STB?: bit 2 (0x04) while an error is queued."""
        return 0x04 if self.count() else 0

    def take_esr(self) -> int:
        value, self.esr = self.esr, 0
        return value


def block(payload: bytes, corruption: str | None) -> tuple[bytes, bool]:
    """IEEE 488.2 definite-length block, spoilt as asked; (bytes, close the connection after)."""
    size = str(len(payload))
    header = b"#%d%s" % (len(size), size.encode())
    if corruption == "bad_header":
        return b"#X" + header[2:] + payload, False
    if corruption == "truncated":
        return header + payload[: len(payload) // 2], True
    if corruption == "short":
        short = str(max(len(payload) - 16, 0))
        return b"#%d%s" % (len(short), short.encode()) + payload, False
    return header + payload, False


class Session:
    """One client connection's view of a board."""

    def __init__(self, board: Board, stop: threading.Event) -> None:
        self.board = board
        self.stop = stop
        self.acq = board.acq
        self.binary = False
        self.big_endian = True
        self.errors = ErrorQueue()
        self.registers: dict[str, int] = {}

    def execute(self, line: str) -> tuple[bytes | None, bool]:
        """Run one line; (reply bytes or None, close the connection after sending)."""
        pieces: list[bytes] = []
        close = False
        for call in split_message(line):
            self.board.link.delay(self.stop)
            self.board.count("commands")
            reply, close_now = self._run(call)
            if reply is not None:
                pieces.append(reply)
            close = close or close_now
        if not pieces:
            return None, close
        return b";".join(pieces) + (b"" if close else b"\r\n"), close

    def _run(self, call: Call) -> tuple[bytes | None, bool]:
        for pattern, handler, most in _TABLE:
            nums = pattern.match(call.header)
            if nums is None:
                continue
            call.nums = nums
            try:
                with self.board.lock:
                    result = handler(self, call)
            except Fail as fail:
                self.board.count("errors")
                for entry in fail.entries:
                    self.errors.push(*entry)
                return (b"" if pattern.query and self.board.ret_on_error else None), False
            if call.used < len(call.params) or len(call.params) > most:
                self.errors.push("scpi", -108, SCPI_TEXT[-108])
            return self._encode(result)
        self.board.count("errors")
        self.errors.push("scpi", -113, SCPI_TEXT[-113])
        return None, False

    def _encode(self, result) -> tuple[bytes | None, bool]:
        if result is None:
            return None, False
        if isinstance(result, str):
            return result.encode("latin-1"), False
        assert isinstance(result, Data)
        volts = self.acq.settings.units == "VOLTS"
        if not self.binary:
            if volts:
                values = to_volts(result.counts, result.gain).tolist()
                text = ",".join("%f" % v for v in values)
            else:
                text = ",".join(map(str, result.counts.tolist()))
            return ("{" + text + "}").encode(), False
        order = ">" if self.big_endian else "<"
        raw = to_volts(result.counts, result.gain).astype(order + "f4") if volts else result.counts.astype(order + "i2")
        return block(raw.tobytes(), self.board.take_corruption())


def serve_connection(board: Board, stop: threading.Event, conn: socket.socket) -> None:
    """Read commands until the client leaves (or the board drops it), answer each line."""
    session = Session(board, stop)
    mine = board.new_connection()
    pending = b""
    while not stop.is_set():
        if board.wait_if_hung(stop) and board.connections != mine:
            return      # a client that reconnected during the hang owns the board now
        chunk = conn.recv(65536)
        if not chunk:
            return
        pending += chunk
        while b"\n" in pending and not stop.is_set():
            raw, pending = pending.split(b"\n", 1)
            line = raw.rstrip(b"\r").decode("latin-1")
            if not line.strip():
                continue
            if board.wait_if_hung(stop) and board.connections != mine:
                return      # its queued commands must not undo the new connection's set-up
            reply, close = session.execute(line)
            if reply:
                board.count("bytes_sent", board.link.send(conn, reply, stop))
            if close:
                conn.shutdown(socket.SHUT_RDWR)
                return
