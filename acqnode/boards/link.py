"""One TCP connection to a board, shared by the SCPI and MCPHA clients.

Reads go through one buffer so that a reply line and a binary block can follow each
other in any split the network chooses; large payloads are received straight into the
caller's memory (a ring slot), never through an intermediate bytes object.
"""
from __future__ import annotations

import socket
import time


class BoardError(Exception):
    """Something about the board went wrong; the message names the board and what."""


class BoardUnreachable(BoardError):
    """No connection: refused, timed out, or dropped by the board."""


class BoardTimeout(BoardError):
    """The board accepted the request but did not answer in time."""


class BoardProtocolError(BoardError):
    """The board's answer cannot be parsed (garbage, truncated block); the stream is out of
    step, so the connection is closed and must be made again."""


class Link:
    def __init__(self, host: str, port: int, timeout: float, what: str = "board") -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.what = what
        self.sock: socket.socket | None = None
        self._buf = bytearray()
        self.bytes_in = 0
        self.connects = 0

    @property
    def where(self) -> str:
        return f"{self.what} at {self.host}:{self.port}"

    def connect(self) -> None:
        self.close()
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        except OSError as exc:
            raise BoardUnreachable(f"cannot reach the {self.where}: {exc.strerror or exc}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(self.timeout)
        self.sock = sock
        self._buf.clear()
        self.connects += 1

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            finally:
                self.sock = None
        self._buf.clear()

    @property
    def connected(self) -> bool:
        return self.sock is not None

    def _need(self) -> socket.socket:
        if self.sock is None:
            self.connect()
        assert self.sock is not None
        return self.sock

    def send(self, data: bytes) -> None:
        sock = self._need()
        sock.settimeout(self.timeout)
        try:
            sock.sendall(data)
        except socket.timeout:
            self.close()
            raise BoardTimeout(f"the {self.where} does not take data (send timed out)") from None
        except OSError as exc:
            self.close()
            raise BoardUnreachable(f"connection to the {self.where} lost: {exc.strerror or exc}") from None

    def _fill(self, timeout: float | None) -> None:
        """Receive more bytes into the buffer, or raise."""
        sock = self._need()
        sock.settimeout(self.timeout if timeout is None else timeout)
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            raise BoardTimeout(f"no answer from the {self.where} within "
                               f"{self.timeout if timeout is None else timeout:g} s") from None
        except OSError as exc:
            self.close()
            raise BoardUnreachable(f"connection to the {self.where} lost: {exc.strerror or exc}") from None
        if not chunk:
            self.close()
            raise BoardUnreachable(f"the {self.where} closed the connection")
        self.bytes_in += len(chunk)
        self._buf += chunk

    def read_line(self, timeout: float | None = None, limit: int = 1 << 24) -> str:
        """One reply line without its `\\r\\n` (a bare `\\n` is accepted too)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            end = self._buf.find(b"\n")
            if end >= 0:
                line = bytes(self._buf[:end])
                del self._buf[:end + 1]
                return line.rstrip(b"\r").decode("ascii", "replace")
            if len(self._buf) > limit:
                self.close()
                raise BoardProtocolError(f"the {self.where} sent {limit} bytes without a line end")
            self._fill(max(0.0, deadline - time.monotonic()))

    def read_exact(self, n: int, timeout: float | None = None) -> bytes:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while len(self._buf) < n:
            self._fill(max(0.0, deadline - time.monotonic()))
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def read_into(self, out: memoryview, timeout: float | None = None) -> None:
        """Exactly len(out) bytes into `out`: what is buffered first, then straight from the socket.

        `timeout` bounds the silence between two pieces, not the whole transfer: a board that
        sends a slow set of waveforms is working, one that sends nothing is not."""
        n = len(out)
        have = min(n, len(self._buf))
        out[:have] = self._buf[:have]
        del self._buf[:have]
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        sock = self._need()
        while have < n:
            left = deadline - time.monotonic()
            if left <= 0:
                self.close()   # part of a payload was consumed: the stream is out of step
                raise BoardTimeout(f"the {self.where} sent {have} of {n} bytes, then nothing "
                                   f"within {self.timeout:g} s")
            sock.settimeout(left)
            try:
                got = sock.recv_into(out[have:])
            except socket.timeout:
                continue
            except OSError as exc:
                self.close()
                raise BoardUnreachable(f"connection to the {self.where} lost: {exc.strerror or exc}") from None
            if got == 0:
                self.close()
                raise BoardProtocolError(f"the {self.where} closed the connection after {have} of {n} bytes")
            have += got
            self.bytes_in += got
            deadline = time.monotonic() + (self.timeout if timeout is None else timeout)

    def discard_pending(self) -> None:
        """Drop whatever the board sent that nobody asked for (after a timeout)."""
        self._buf.clear()
        if self.sock is None:
            return
        self.sock.settimeout(0.0)
        try:
            while self.sock.recv(65536):
                pass
        except (BlockingIOError, socket.timeout):
            pass
        except OSError:
            self.close()
