"""Shared-memory frame ring of the acquisition node (one writer, one consumer, any observers).

Layout of a segment ``daqring-<ownerpid>-<label>`` in /dev/shm::

    0      control block (CTRL_SIZE = 4096 bytes)
             0  magic b"DAQRING\\0", layout version, control size, owner pid + start time,
                slots, itemsize, offsets, dtype JSON length, owner's eventfd numbers (info)
           128  head      u8  records ever written         (written by the writer only)
           136  overflow  u8  records the writer dropped   (writer only)
           144  closed    u8  1 = writer will write no more (writer only)
           192  tail      u8  records ever released        (consumer only; own cache line)
           256  dtype description, JSON text (up to CTRL_SIZE - 256 bytes)
    4096   stamp[slots]  u8   position held by each slot, BUSY (all ones) while being written
    data   slots * itemsize bytes, offset aligned to 64

Position p (0, 1, 2, ... for ever) lives in slot p % slots.  The writer may store position p
only when p - tail < slots, so unconsumed records are never overwritten; released records stay
readable by observers until the writer needs their slot.

Hot path: records are copied in and out as raw bytes (views of whole records as ``np.void``
of the record size, so a copy is a memcpy, never a field-by-field structured assignment), whole
batches at a time, with at most two copies for a batch that wraps around the end.  Per batch
the writer does 2-3 vectorised stamp stores, one counter store and one eventfd_write.

Doorbells: ``filled`` (writer -> consumer) and ``freed`` (consumer -> writer) are eventfds
created by the owner and handed to the other processes by number (``subprocess.Popen(...,
pass_fds=ring.fds)`` or inheritance through fork).  The shared counters are the truth; an
eventfd only wakes a waiter, which re-checks the counters after draining it.  Because an
eventfd count persists until drained, a wake-up sent between "check" and "sleep" is never lost.

Observers use the stamps as a seqlock: a record is returned only if the slot's stamp equals
the wanted position both before and after the copy.

Memory ordering: on x86-64 (TSO) the program order of plain stores/loads is all this needs.
On other architectures a fence is made from a thread-local lock release+acquire (glibc's
semaphore atomics are release/acquire, which order the publishing stores), see ``_fence``.
Counters are 8-byte aligned uint64: a 64-bit platform (x86-64, aarch64) is assumed.

Lifetime: all arrays are ``np.frombuffer`` views of the mapping, which hold a buffer export, so
``close()`` never unmaps memory that a peeked view (or a zero-copy ZeroMQ send) still uses; the
mapping then goes away with the last view.  Segments are plain /dev/shm files (see ``acqnode.shm``),
so the multiprocessing resource tracker is never involved; the owner unlinks on close / exit,
and ``cleanup_stale`` removes segments whose owner died.

Each role's methods are meant to be used by one thread of one process at a time.
"""
from __future__ import annotations

import json
import math
import os
import platform
import select
import struct
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from coordinator.frames import HEADER_FIELDS
from . import shm
from .shm import PREFIX, segment_names  # re-exported

__all__ = ["Ring", "RingStatus", "cleanup_stale", "segment_names", "BUSY", "MAGIC", "LAYOUT_VERSION"]

MAGIC = b"DAQRING\0"
LAYOUT_VERSION = 1
CTRL_SIZE = 4096
DATA_ALIGN = 64
BUSY = np.uint64(0xFFFF_FFFF_FFFF_FFFF)
_BUSY_INT = int(BUSY)

# static part of the control block (magic is written last, after everything else is in place)
_STATIC = struct.Struct("<8sIIQQQQQQQIii4xQ")
#            magic ver ctrl pid start slots isz stamp_off data_off total json_len filled freed created_ns
_OFF_HEAD = 128
_OFF_OVERFLOW = 136
_OFF_CLOSED = 144
_OFF_TAIL = 192
_OFF_DTYPE = 256
DTYPE_JSON_MAX = CTRL_SIZE - _OFF_DTYPE

_EFD_FLAGS = os.EFD_NONBLOCK | os.EFD_CLOEXEC


# -- memory fences ----------------------------------------------------------------------------

def _no_fence() -> None:
    return None


_fence_tls = threading.local()


def _lock_fence() -> None:
    """Release then re-acquire a per-thread lock: a store-release followed by a load-acquire,
    which orders all earlier memory accesses before all later ones (RCsc on aarch64)."""
    lk = getattr(_fence_tls, "lock", None)
    if lk is None:
        lk = _fence_tls.lock = threading.Lock()
        lk.acquire()
    lk.release()
    lk.acquire()


_fence = _no_fence if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686", "x86") else _lock_fence


# -- dtype description ------------------------------------------------------------------------

def _encode_dtype(dt: np.dtype):
    if dt.fields is None:
        if dt.subdtype is not None:
            raise ValueError(f"unsupported dtype {dt!r}")
        return dt.str
    fields = []
    for name in dt.names:
        ft, off = dt.fields[name][:2]
        fields.append([name, _encode_dtype(ft.base), list(ft.shape), off])
    return {"fields": fields, "itemsize": dt.itemsize}


def _decode_dtype(obj) -> np.dtype:
    if isinstance(obj, str):
        return np.dtype(obj)
    names, formats, offsets = [], [], []
    for name, fmt, shape, off in obj["fields"]:
        base = _decode_dtype(fmt)
        names.append(name)
        formats.append((base, tuple(shape)) if shape else base)
        offsets.append(off)
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": obj["itemsize"]})


def _check_dtype(dtype) -> np.dtype:
    dt = np.dtype(dtype)
    if dt.names is None:
        raise ValueError(f"ring dtype must be a structured frame dtype, got {dt!r}")
    if dt.hasobject:
        raise ValueError("ring dtype must not contain Python objects")
    if dt.itemsize == 0:
        raise ValueError("ring dtype has itemsize 0")
    for i, (hname, htype) in enumerate(HEADER_FIELDS):
        if len(dt.names) <= i or dt.names[i] != hname or dt.fields[hname][0] != np.dtype(htype):
            raise ValueError(f"ring dtype must start with the frame header fields {HEADER_FIELDS}, got {dt!r}")
    return dt


# -- public helpers ---------------------------------------------------------------------------

@dataclass(frozen=True)
class RingStatus:
    slots: int
    written: int     # records ever written (= head counter)
    consumed: int    # records ever released by the consumer (= tail counter)
    overflow: int    # records the writer dropped
    fill: int        # written - consumed
    head: int        # position of the newest record, -1 if none


def _read_owner(name: str) -> tuple[int, int] | None:
    """(owner pid, owner start time) from a segment's control block, None if not a valid ring."""
    raw = shm.read_segment_head(name, _STATIC.size)
    if raw is None or len(raw) < _STATIC.size:
        return None
    f = _STATIC.unpack(raw)
    if f[0] != MAGIC:
        return None
    return f[3], f[4]


def cleanup_stale(prefix: str = PREFIX) -> list[str]:
    """Remove segments ``<prefix><pid>-<label>`` whose owner process is gone; return their names.

    The owner is taken from the name and, when the control block is readable, confirmed with the
    pid and process start time stored there (so a reused pid does not keep a stale segment alive,
    and a zombie owner counts as gone).  Segments whose name does not carry a pid are left alone.
    """
    removed = []
    for name in shm.segment_names(prefix):
        parsed = shm.parse_segment_name(name, prefix)
        if parsed is None:
            continue
        pid = parsed[0]
        owner = _read_owner(name)
        if owner is not None and owner[0] == pid:
            alive = shm.pid_alive(pid, owner[1])
        elif owner is not None:          # name and block disagree: keep it if either is alive
            alive = shm.pid_alive(pid) or shm.pid_alive(owner[0], owner[1])
        else:                            # not (yet) initialised, or not ours: go by the name
            alive = shm.pid_alive(pid)
        if not alive and shm.unlink_segment(name):
            removed.append(name)
    return removed


def _resolve_name(name: str) -> str:
    """A full segment name ``daqring-<ourpid>-<label>`` is used as is; anything else is a label."""
    if name.startswith(PREFIX):
        parsed = shm.parse_segment_name(name)
        if parsed is None or parsed[0] != os.getpid():
            raise ValueError(f"segment name {name!r} must be {PREFIX}<owner pid {os.getpid()}>-<label>"
                             " (or pass just the label)")
        return name
    return shm.make_segment_name(name)


def _is_eventfd(fd: int) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}").startswith("anon_inode:[eventfd")
    except OSError:
        return False


def _drain(fd: int | None) -> int:
    if fd is None:
        return 0
    try:
        return os.eventfd_read(fd)
    except BlockingIOError:
        return 0


def _ring_bell(fd: int | None) -> None:
    if fd is not None:
        try:
            os.eventfd_write(fd, 1)
        except BlockingIOError:  # counter saturated: the waiter is awake anyway
            pass


def _try_close(mm) -> None:
    """Unmap now unless views (``np.frombuffer`` exports) are still alive: then the mapping
    goes away with the last of them, never under their feet."""
    try:
        mm.close()
    except BufferError:
        pass


def _owner_finalize(name: str, owner_pid: int, fds: tuple) -> None:
    for fd in fds:
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass
    if owner_pid == os.getpid():  # never from a forked child that inherited the owner object
        shm.unlink_segment(name)


# -- the ring ---------------------------------------------------------------------------------

class Ring:
    """See the module docstring.  Use :meth:`create` (owner) or :meth:`attach` (others)."""

    name: str
    dtype: np.dtype
    slots: int
    itemsize: int
    filled_fd: int | None
    freed_fd: int | None
    records: np.ndarray

    def __init__(self, name: str, mm, *, owner: bool, filled_fd: int | None, freed_fd: int | None):
        """Internal: use :meth:`create` / :meth:`attach`."""
        if len(mm) < CTRL_SIZE:
            raise ValueError(f"shared-memory segment {name!r} is too small to be a ring")
        f = _STATIC.unpack_from(mm, 0)
        magic, version, ctrl_size, pid, start, slots, isz, stamp_off, data_off, total, jlen = f[:11]
        if magic != MAGIC:
            raise ValueError(f"shared-memory segment {name!r} is not a DAQ ring (bad magic {magic!r})")
        if version != LAYOUT_VERSION or ctrl_size != CTRL_SIZE:
            raise ValueError(f"shared-memory segment {name!r} has ring layout version {version} "
                             f"(control size {ctrl_size}); this code reads version {LAYOUT_VERSION}")
        if total > len(mm) or data_off + slots * isz != total or jlen > DTYPE_JSON_MAX:
            raise ValueError(f"shared-memory segment {name!r} has an inconsistent control block")
        try:
            dtype = _decode_dtype(json.loads(bytes(mm[_OFF_DTYPE:_OFF_DTYPE + jlen]).decode()))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"shared-memory segment {name!r}: unreadable dtype description ({exc})") from None
        if dtype.itemsize != isz:
            raise ValueError(f"shared-memory segment {name!r}: dtype itemsize {dtype.itemsize} != {isz}")

        self.name = name
        self.dtype = dtype
        self.slots = int(slots)
        self.itemsize = int(isz)
        self.owner_pid = int(pid)
        self.is_owner = owner
        self.filled_fd = filled_fd
        self.freed_fd = freed_fd
        self._mm = mm
        self._head = np.frombuffer(mm, "<u8", 1, _OFF_HEAD)
        self._overflow = np.frombuffer(mm, "<u8", 1, _OFF_OVERFLOW)
        self._wclosed = np.frombuffer(mm, "<u8", 1, _OFF_CLOSED)
        self._tail = np.frombuffer(mm, "<u8", 1, _OFF_TAIL)
        self.stamps = np.frombuffer(mm, "<u8", self.slots, stamp_off)
        self._vdtype = np.dtype((np.void, self.itemsize))
        self._ok_dtype = dtype
        self._vrec = np.frombuffer(mm, self._vdtype, self.slots, data_off)  # raw records (memcpy)
        self.records = np.frombuffer(mm, dtype, self.slots, data_off)
        self._pollers: dict[int, select.poll] = {}
        self._reserved = 0
        self._is_closed = False
        fds = (filled_fd, freed_fd)
        if owner:
            self._finalizer = weakref.finalize(self, _owner_finalize, name, self.owner_pid, fds)
        else:
            self._finalizer = weakref.finalize(self, _owner_finalize, name, -1, fds)  # close our dups only

    # -- construction ----------------------------------------------------------------------

    @classmethod
    def create(cls, name: str, dtype: np.dtype, slots: int) -> "Ring":
        """Create a ring segment owned by this process (which unlinks it on close/exit).

        ``name`` is a label ``[A-Za-z0-9_-]+`` (the segment becomes ``daqring-<pid>-<label>``) or
        such a full name with this process's pid.  Stale segments of dead owners are removed first.
        """
        dtype = _check_dtype(dtype)
        slots = int(slots)
        if slots < 1:
            raise ValueError("slots must be >= 1")
        seg = _resolve_name(name)
        desc = json.dumps(_encode_dtype(dtype), separators=(",", ":")).encode()
        if _decode_dtype(json.loads(desc)) != dtype:
            raise ValueError(f"dtype {dtype!r} cannot be described in the ring control block")
        if len(desc) > DTYPE_JSON_MAX:
            raise ValueError(f"dtype description is {len(desc)} bytes, the control block holds {DTYPE_JSON_MAX}")
        cleanup_stale(PREFIX)
        stamp_off = CTRL_SIZE
        data_off = -(-(stamp_off + 8 * slots) // DATA_ALIGN) * DATA_ALIGN
        total = data_off + slots * dtype.itemsize
        mm = shm.create_segment(seg, total)
        filled = freed = None
        try:
            filled = os.eventfd(0, _EFD_FLAGS)
            freed = os.eventfd(0, _EFD_FLAGS)
            pid = os.getpid()
            mm[_OFF_DTYPE:_OFF_DTYPE + len(desc)] = desc
            np.frombuffer(mm, "<u8", slots, stamp_off)[:] = BUSY
            _STATIC.pack_into(mm, 0, b"\0" * 8, LAYOUT_VERSION, CTRL_SIZE, pid, shm.process_start_time(pid),
                              slots, dtype.itemsize, stamp_off, data_off, total, len(desc), filled, freed,
                              time.time_ns())
            mm[0:8] = MAGIC
            return cls(seg, mm, owner=True, filled_fd=filled, freed_fd=freed)
        except BaseException:
            for fd in (filled, freed):
                if fd is not None:
                    os.close(fd)
            _try_close(mm)
            shm.unlink_segment(seg)
            raise

    @classmethod
    def attach(cls, name: str, filled_fd: int | None = None, freed_fd: int | None = None) -> "Ring":
        """Attach to an existing ring (writer, consumer or observer); reads dtype/slots from it.

        ``filled_fd``/``freed_fd`` are the owner's doorbell eventfds as inherited by this process;
        they are duplicated (the caller keeps its numbers).  Without them the ring still works,
        but ``wait_free``/``wait_available`` fall back to sleeping in short steps (observers need none).
        """
        mm = shm.open_segment(name)
        dups: list[int] = []
        try:
            fds = []
            for label, fd in (("filled_fd", filled_fd), ("freed_fd", freed_fd)):
                if fd is None:
                    fds.append(None)
                    continue
                if not _is_eventfd(int(fd)):
                    raise ValueError(f"{label}={fd} is not an open eventfd in this process (ring {name!r})")
                dups.append(os.dup(int(fd)))
                fds.append(dups[-1])
            return cls(name, mm, owner=False, filled_fd=fds[0], freed_fd=fds[1])
        except BaseException:
            for fd in dups:
                os.close(fd)
            _try_close(mm)
            raise

    @property
    def fds(self) -> tuple[int, ...]:
        """The doorbell fds to pass to a child (``Popen(..., pass_fds=ring.fds)``)."""
        return tuple(fd for fd in (self.filled_fd, self.freed_fd) if fd is not None)

    # -- waiting ---------------------------------------------------------------------------

    def _wait(self, fd: int | None, ready: Callable[[], bool], timeout: float | None) -> bool:
        if ready():
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        nap = 0.0005
        while True:
            if deadline is None:
                remaining = None
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return ready()
            if fd is None:  # no doorbell in this process: sleep in short, growing steps
                time.sleep(nap if remaining is None else min(nap, remaining))
                nap = min(nap * 2, 0.01)
            else:
                p = self._pollers.get(fd)
                if p is None:
                    p = self._pollers[fd] = select.poll()
                    p.register(fd, select.POLLIN)
                p.poll(None if remaining is None else max(1, math.ceil(remaining * 1000)))
                _drain(fd)
            if ready():
                return True

    def drain_doorbell(self) -> int:
        """Reset the ``filled`` doorbell (after zmq.Poller reported ``filled_fd`` readable);
        then look at :meth:`available`.  Returns the drained count."""
        return _drain(self.filled_fd)

    def drain_freed(self) -> int:
        """Reset the ``freed`` doorbell (for a writer polling ``freed_fd`` itself)."""
        return _drain(self.freed_fd)

    # -- writer ----------------------------------------------------------------------------

    def free_slots(self) -> int:
        return self.slots - (self._head.item() - self._tail.item())

    def wait_free(self, timeout: float | None) -> bool:
        """True as soon as >= 1 slot is free; False after ``timeout`` s.  Sleeps on the freed doorbell."""
        head, tail, slots = self._head, self._tail, self.slots
        return self._wait(self.freed_fd, lambda: head.item() - tail.item() < slots, timeout)

    def _as_records(self, frames) -> np.ndarray:
        """``frames`` as a 1-D C-contiguous array of raw records (void dtype of the ring's itemsize).
        Copying void records is a plain memcpy, unlike field-by-field structured assignment."""
        if isinstance(frames, np.ndarray):
            dt = frames.dtype
            if dt is not self._vdtype and dt is not self._ok_dtype:
                if dt == self.dtype:
                    self._ok_dtype = dt  # identity check from now on (dtype == costs ~0.3 us)
                elif not (dt == np.uint8 or (dt.kind == "V" and dt.names is None
                                             and dt.itemsize in (1, self.itemsize))):
                    raise TypeError(f"frames have dtype {dt!r}, the ring holds {self.dtype!r}")
            if frames.ndim != 1 or not frames.flags.c_contiguous:
                frames = np.ascontiguousarray(frames).reshape(-1)
        else:
            frames = np.frombuffer(frames, np.uint8)
        if frames.dtype.itemsize != self.itemsize:
            if frames.nbytes % self.itemsize:
                raise ValueError(f"{frames.nbytes} bytes is not a whole number of {self.itemsize}-byte records")
            frames = frames.view(np.uint8)
        return frames.view(self._vdtype)

    def write(self, frames) -> int:
        """Store up to :meth:`free_slots` records from ``frames`` (oldest first); never blocks.

        ``frames``: an array of the ring's dtype, or a uint8/void buffer of whole records.
        Returns how many were stored (the leading ones); wakes the consumer if > 0.
        """
        src = self._as_records(frames)
        slots = self.slots
        head = self._head.item()
        n = min(len(src), slots - (head - self._tail.item()))
        if n <= 0:
            return 0
        if self._wclosed.item():
            raise RuntimeError(f"ring {self.name!r}: write after close_writer()")
        i = head % slots
        first = min(n, slots - i)
        rest = n - first
        st = self.stamps
        dst = self._vrec
        st[i:i + first] = BUSY
        if rest:
            st[:rest] = BUSY
        _fence()
        dst[i:i + first] = src[:first]
        if rest:
            dst[:rest] = src[first:n]
        _fence()
        if n == 1:
            st[i] = head
        else:
            pos = np.arange(head, head + n, dtype=np.uint64)
            st[i:i + first] = pos[:first]
            if rest:
                st[:rest] = pos[first:]
        _fence()
        self._head[0] = head + n
        _ring_bell(self.filled_fd)
        return n

    def reserve(self, max_n: int) -> list[np.ndarray]:
        """Zero-copy alternative to :meth:`write` for a source that can fill records in place
        (e.g. ``sock.recv_into``): writable views of up to ``max_n`` free slots ([] if full, two
        views if the run wraps), marked BUSY for observers.  Publish the first n with :meth:`commit`."""
        slots = self.slots
        head = self._head.item()
        n = min(int(max_n), slots - (head - self._tail.item()))
        if n <= 0:
            self._reserved = 0
            return []
        if self._wclosed.item():
            raise RuntimeError(f"ring {self.name!r}: reserve after close_writer()")
        i = head % slots
        first = min(n, slots - i)
        st = self.stamps
        st[i:i + first] = BUSY
        if n > first:
            st[:n - first] = BUSY
        _fence()
        self._reserved = n
        if first == n:
            return [self.records[i:i + n]]
        return [self.records[i:], self.records[:n - first]]

    def commit(self, n: int) -> None:
        """Publish the first ``n`` records filled in the views of the last :meth:`reserve`."""
        n = int(n)
        if not 0 <= n <= self._reserved:
            raise ValueError(f"commit({n}) but {self._reserved} slots are reserved")
        self._reserved = 0
        if n == 0:
            return
        head = self._head.item()
        i = head % self.slots
        first = min(n, self.slots - i)
        _fence()
        pos = np.arange(head, head + n, dtype=np.uint64)
        st = self.stamps
        st[i:i + first] = pos[:first]
        if n > first:
            st[:n - first] = pos[first:]
        _fence()
        self._head[0] = head + n
        _ring_bell(self.filled_fd)

    def note_dropped(self, n: int) -> None:
        """The writer dropped ``n`` records (full ring under the ``drop`` policy)."""
        if n < 0:
            raise ValueError("n must be >= 0")
        if n:
            self._overflow[0] = self._overflow.item() + int(n)

    def put(self, frames, policy: str, stop: Callable[[], bool] | None = None, poll: float = 0.1) -> int:
        """Write a whole batch under a full-ring policy; returns the number stored.

        ``block``: wait for free slots (``wait_free(poll)``, checking ``stop()`` between waits)
        until all are stored or ``stop()`` is true.  ``drop``: store what fits now, count the
        rest (the trailing records of the batch) with :meth:`note_dropped`.
        """
        src = self._as_records(frames)
        total = len(src)
        if policy == "drop":
            n = self.write(src)
            if n < total:
                self.note_dropped(total - n)
            return n
        if policy != "block":
            raise ValueError(f"policy must be 'block' or 'drop', not {policy!r}")
        done = 0
        while True:
            done += self.write(src[done:])
            if done >= total:
                return done
            if stop is not None and stop():
                return done
            self.wait_free(poll)

    def close_writer(self) -> None:
        """No more records will come: sets the closed flag and wakes the consumer."""
        _fence()
        self._wclosed[0] = 1
        _ring_bell(self.filled_fd)

    def reopen_writer(self) -> None:
        """The ring's next run (the owner, with the ring empty): records may come again."""
        if self.available():
            raise RuntimeError(f"ring {self.name!r}: reopen_writer() with {self.available()} records unconsumed")
        _fence()
        self._wclosed[0] = 0

    # -- consumer --------------------------------------------------------------------------

    def available(self) -> int:
        tail = self._tail.item()  # tail first: head only grows, so the difference is never < 0
        return self._head.item() - tail

    @property
    def writer_closed(self) -> bool:
        return bool(self._wclosed.item())

    def wait_available(self, timeout: float | None) -> bool:
        """True when >= 1 record is unconsumed or the writer has closed (check :meth:`available`);
        False after ``timeout`` s.  Sleeps on the filled doorbell."""
        head, tail, closed = self._head, self._tail, self._wclosed
        return self._wait(self.filled_fd, lambda: head.item() > tail.item() or closed.item() != 0, timeout)

    def peek(self, max_n: int) -> list[np.ndarray]:
        """Zero-copy views of the oldest unconsumed records, up to ``max_n`` in total: [] or one
        view, or two if the run wraps around the end.  Valid until :meth:`release`."""
        tail = self._tail.item()
        n = min(int(max_n), self._head.item() - tail)
        if n <= 0:
            return []
        _fence()
        i = tail % self.slots
        first = min(n, self.slots - i)
        if first == n:
            return [self.records[i:i + n]]
        return [self.records[i:], self.records[:n - first]]

    def release(self, n: int) -> None:
        """The oldest ``n`` unconsumed records are done with (their views must not be used any
        more); wakes a writer waiting for space."""
        n = int(n)
        if n <= 0:
            if n < 0:
                raise ValueError("n must be >= 0")
            return
        tail = self._tail.item()
        if n > self._head.item() - tail:
            raise ValueError(f"release({n}) but only {self._head.item() - tail} records are unconsumed")
        _fence()
        self._tail[0] = tail + n
        _ring_bell(self.freed_fd)

    def read(self, max_n: int) -> np.ndarray:
        """Copy out and release up to ``max_n`` of the oldest unconsumed records (convenience)."""
        views = self.peek(max_n)
        if not views:
            return np.empty(0, self.dtype)
        out = views[0].copy() if len(views) == 1 else np.concatenate(views)
        self.release(len(out))
        return out

    # -- observers -------------------------------------------------------------------------

    def status(self) -> RingStatus:
        tail = self._tail.item()
        head = self._head.item()
        return RingStatus(slots=self.slots, written=head, consumed=tail, overflow=self._overflow.item(),
                          fill=head - tail, head=head - 1)

    def latest(self, k: int = 0) -> np.ndarray | None:
        """Copy (0-d array of the ring dtype) of the k-th newest record, 0 = newest; None if there
        is no such record (k >= records written, or k >= slots) or it was overwritten/torn while
        being read."""
        k = int(k)
        head = self._head.item()
        if k < 0 or k >= self.slots or k >= head:
            return None
        p = head - 1 - k
        i = p % self.slots
        st = self.stamps
        if st.item(i) != p:
            return None
        _fence()
        out = np.empty(1, self._vdtype)
        out[0:1] = self._vrec[i:i + 1]
        _fence()
        if st.item(i) != p:
            return None
        return out.view(self.dtype).reshape(())

    def history(self, n: int) -> np.ndarray:
        """Copies of up to ``n`` newest records that are intact, oldest first.  Records
        overwritten while being read are left out (never returned torn)."""
        head = self._head.item()
        lo = max(0, head - self.slots, head - int(n))
        m = head - lo
        if m <= 0:
            return np.empty(0, self.dtype)
        slots = self.slots
        i = lo % slots
        first = min(m, slots - i)
        rest = m - first
        st = self.stamps
        before = st[i:i + first].copy() if not rest else np.concatenate((st[i:], st[:rest]))
        _fence()
        out = np.empty(m, self.dtype)
        ov = out.view(self._vdtype)
        ov[:first] = self._vrec[i:i + first]
        if rest:
            ov[first:] = self._vrec[:rest]
        _fence()
        after = st[i:i + first] if not rest else np.concatenate((st[i:], st[:rest]))
        pos = np.arange(lo, head, dtype=np.uint64)
        ok = (before == pos) & (after == pos)
        return out if ok.all() else out[ok]

    # -- lifetime --------------------------------------------------------------------------

    def close(self) -> None:
        """Unmap and close this process's doorbell fds; the owner also unlinks the segment.
        Views handed out earlier keep their mapping alive until they are garbage."""
        if self._is_closed:
            return
        self._is_closed = True
        mm = self._mm
        for attr in ("_head", "_overflow", "_wclosed", "_tail", "stamps", "_vrec", "records", "_mm"):
            setattr(self, attr, None)
        self._pollers.clear()
        _try_close(mm)
        self._finalizer()  # closes fds; the owner (in its own process) unlinks

    def unlink(self) -> None:
        """Remove the segment's name (processes still attached keep working)."""
        shm.unlink_segment(self.name)

    @property
    def closed(self) -> bool:
        return self._is_closed

    def __enter__(self) -> "Ring":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        if self._is_closed:
            return f"<Ring {self.name!r} closed>"
        s = self.status()
        return (f"<Ring {self.name!r} slots={self.slots} itemsize={self.itemsize} written={s.written} "
                f"consumed={s.consumed} overflow={s.overflow}{' owner' if self.is_owner else ''}>")
