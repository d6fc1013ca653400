"""A threaded TCP listener: one thread accepts, one thread serves each connection.

Threads, not one selector loop, because a connection may block for real time (waiting for
a trigger, pacing a transfer, a `hang`) without holding up the others.  Every wait in a
handler goes through the shared `stop` event, so `close()` ends all of them promptly.
"""
from __future__ import annotations

import errno
import socket
import threading
from typing import Callable

ACCEPT_POLL = 0.1


class PortInUse(OSError):
    """The listening address is taken (or not allowed); the message names host:port."""

    def __init__(self, host: str, port: int, reason: str) -> None:
        super().__init__(f"cannot listen on {host}:{port}: {reason}")
        self.host, self.port = host, port


Handler = Callable[[socket.socket], None]


class TcpService:
    def __init__(self, name: str, host: str, port: int, handler: Handler, stop: threading.Event) -> None:
        self.name = name
        self.host = host
        self.port = port
        self._handler = handler
        self._stop = stop
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._acceptor: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
            sock.listen(16)
        except OSError as exc:
            sock.close()
            reason = {errno.EADDRINUSE: "address already in use",
                      errno.EACCES: "permission denied (ports below 1024 need privileges)"}.get(
                          exc.errno, exc.strerror or str(exc))
            raise PortInUse(self.host, self.port, reason) from exc
        sock.settimeout(ACCEPT_POLL)
        self.port = sock.getsockname()[1]
        self._listener = sock
        self._acceptor = threading.Thread(target=self._accept_loop, name=f"{self.name}-accept", daemon=True)
        self._acceptor.start()

    def _spawn(self, target, name: str, *args) -> None:
        th = threading.Thread(target=target, args=args, name=name, daemon=True)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(th)
        th.start()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            if self._stop.is_set():
                conn.close()
                return
            conn.settimeout(None)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._conns.add(conn)
            self._spawn(self._serve, f"{self.name}-conn", conn)

    def _serve(self, conn: socket.socket) -> None:
        try:
            self._handler(conn)
        except OSError:
            pass                      # the peer went away or the connection was dropped
        finally:
            with self._lock:
                self._conns.discard(conn)
            try:
                conn.close()
            except OSError:
                pass

    def drop_connections(self) -> None:
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        """Stop accepting, drop every connection, join every thread (the stop event is set)."""
        self._stop.set()
        if self._acceptor is not None:
            self._acceptor.join(timeout=5)  # no new connection after this
        if self._listener is not None:
            self._listener.close()
        self.drop_connections()
        with self._lock:
            threads = list(self._threads)
        for th in threads:
            if th is not threading.current_thread():
                th.join(timeout=5)
