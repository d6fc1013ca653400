"""SCPI client for Red Pitaya boards (TCP port 5000).

The official Python module is a loose file users copy, so the project has its own. What
it must handle that the official one does not:

* A query the board rejects gets no reply at all. A reply that does not come within the
  timeout therefore makes the client read the error queue (`SYST:ERR:NEXT?`), and the error
  raised names the command and the board's own message.
* Settings are fire-and-forget in SCPI; `settle()` asks `*STB?` (bit 0x04: error queue not
  empty) once after a group of them, so a rejected setting is found where it was made.
* Binary data comes as IEEE 488.2 definite-length blocks `#<d><len><bytes>\\r\\n`; the
  samples are received straight into the caller's array (a ring slot).
* The connection can drop; `reconnect()` makes it again, and the caller re-applies settings.
"""
from __future__ import annotations

import numpy as np

from acqnode.boards.link import BoardError, BoardProtocolError, BoardTimeout, BoardUnreachable, Link

__all__ = ["ScpiClient", "ScpiError", "BoardError", "BoardTimeout", "BoardUnreachable",
           "BoardProtocolError"]

STB_ERROR_QUEUE = 0x04
MAX_QUEUE_READ = 32      # errors read in one go (a board keeps a bounded queue)


class ScpiError(BoardError):
    """The board rejected a command; `code` and `board_message` are the board's own words."""

    def __init__(self, command: str, code: int, board_message: str, where: str) -> None:
        super().__init__(f"{where} rejected {command!r}: {code},\"{board_message}\"")
        self.command, self.code, self.board_message = command, code, board_message


class ScpiClient:
    def __init__(self, host: str, port: int = 5000, timeout: float = 2.0) -> None:
        self.link = Link(host, port, timeout, "Red Pitaya")
        self.commands = 0

    # -- connection ------------------------------------------------------------------------
    def connect(self) -> "ScpiClient":
        self.link.connect()
        return self

    def reconnect(self) -> None:
        self.link.connect()

    def close(self) -> None:
        self.link.close()

    def __enter__(self) -> "ScpiClient":
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- commands and queries --------------------------------------------------------------
    def write(self, command: str) -> None:
        """Send a command that has no reply (a setting); see `settle()` for its errors."""
        self.commands += 1
        self.link.send(command.encode("ascii") + b"\r\n")

    def query(self, command: str) -> str:
        """A query with a one-line reply; a rejected query raises ScpiError naming it."""
        self.write(command)
        try:
            reply = self.link.read_line()
        except BoardTimeout:
            self._raise_for(command)
            raise
        if reply == "" and self._queue_not_empty():   # RP:RET_ON_ERROR ON: empty line on error
            self._raise_for(command)
        return reply

    def query_int(self, command: str) -> int:
        reply = self.query(command)
        try:
            return int(float(reply))
        except ValueError:
            raise BoardProtocolError(f"{self.link.where} answered {command!r} with {reply!r}, "
                                     f"expected a number") from None

    def query_float(self, command: str) -> float:
        reply = self.query(command)
        try:
            return float(reply.split()[0]) if reply else float("nan")
        except ValueError:
            raise BoardProtocolError(f"{self.link.where} answered {command!r} with {reply!r}, "
                                     f"expected a number") from None

    def query_values(self, command: str, dtype: np.dtype | str = np.float32) -> np.ndarray:
        """An ASCII array reply `{v1,v2,...}`."""
        reply = self.query(command).strip()
        if not (reply.startswith("{") and reply.endswith("}")):
            raise BoardProtocolError(f"{self.link.where} answered {command!r} with "
                                     f"{reply[:40]!r}..., expected {{v1,v2,...}}")
        body = reply[1:-1]
        try:
            return np.array([float(v) for v in body.split(",")] if body else [], dtype=dtype)
        except ValueError:
            raise BoardProtocolError(f"{self.link.where} sent a malformed value list for {command!r}") from None

    def query_block(self, command: str, out: np.ndarray | None = None) -> np.ndarray | bytes:
        """A binary-block reply. With `out` (a contiguous array) the payload must fill it
        exactly and is received straight into it; without, the bytes are returned."""
        self.write(command)
        try:
            head = self.link.read_exact(2)
        except BoardTimeout:
            self._raise_for(command)
            raise
        if head[:1] != b"#" or not head[1:2].isdigit() or head[1:2] == b"0":
            self.link.close()
            raise BoardProtocolError(f"{self.link.where} answered {command!r} with {head!r}..., "
                                     f"expected a definite-length block #<d><len>")
        digits = int(head[1:2])
        size_text = self.link.read_exact(digits)
        if not size_text.isdigit():
            self.link.close()
            raise BoardProtocolError(f"{self.link.where}: block length {size_text!r} for {command!r} "
                                     f"is not a number")
        size = int(size_text)
        if out is not None:
            view = memoryview(out).cast("B")
            if size != len(view):
                self.link.close()
                raise BoardProtocolError(f"{self.link.where} sent a block of {size} bytes for {command!r}, "
                                         f"expected {len(view)}")
            self.link.read_into(view)
            payload: np.ndarray | bytes = out
        else:
            payload = self.link.read_exact(size)
        end = self.link.read_exact(2)
        if end != b"\r\n":
            self.link.close()
            raise BoardProtocolError(f"{self.link.where}: block for {command!r} is followed by {end!r}, "
                                     f"expected \\r\\n (wrong length field?)")
        return payload

    # -- the error queue -------------------------------------------------------------------
    def errors(self) -> list[tuple[int, str]]:
        """Drain the board's error queue."""
        out = []
        for _ in range(MAX_QUEUE_READ):
            self.write("SYST:ERR:NEXT?")
            code, message = _parse_error(self.link.read_line())
            if code == 0:
                break
            out.append((code, message))
        return out

    def settle(self, commands: str) -> None:
        """After a group of settings: raise ScpiError if the board queued an error."""
        if self._queue_not_empty():
            self._raise_for(commands)

    def _queue_not_empty(self) -> bool:
        self.write("*STB?")
        try:
            return bool(int(self.link.read_line()) & STB_ERROR_QUEUE)
        except ValueError:
            return False

    def _raise_for(self, command: str) -> None:
        """A query went unanswered or came back empty: the error queue says why."""
        self.link.discard_pending()
        try:
            errs = self.errors()
        except BoardTimeout:
            raise BoardTimeout(f"the {self.link.where} does not answer ({command!r} and then "
                               f"SYST:ERR:NEXT? went unanswered)") from None
        if errs:
            code, message = errs[0]
            raise ScpiError(command, code, message, self.link.where)


def _parse_error(line: str) -> tuple[int, str]:
    code_text, _, message = line.partition(",")
    try:
        code = int(code_text)
    except ValueError:
        return -1, line
    return code, message.strip().strip('"')
