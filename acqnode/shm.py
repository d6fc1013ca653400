"""POSIX shared-memory segments for the acquisition rings, without the resource tracker.

Segments are plain files in ``/dev/shm`` (which is where glibc's ``shm_open``
puts them), opened and mapped here directly.  This keeps Python's
``multiprocessing.resource_tracker`` out of the picture entirely: no process
that merely *attaches* can unlink a segment when it exits, and nothing prints
"leaked shared_memory" warnings.  Only the owner unlinks.

Names are ``<prefix><ownerpid>-<label>`` (default prefix ``daqring-``), so a
segment left behind by a crashed owner can be recognised and removed by
:func:`acqnode.ring.cleanup_stale`.
"""
from __future__ import annotations

import errno
import mmap
import os
import re

SHM_DIR = "/dev/shm"
PREFIX = "daqring-"

_LABEL_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_PID_LABEL_RE = re.compile(r"^(?P<pid>[0-9]+)-(?P<label>[A-Za-z0-9_-]+)$")
_NAME_MAX = 255


def segment_path(name: str) -> str:
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"invalid shared-memory segment name {name!r}")
    return os.path.join(SHM_DIR, name)


def make_segment_name(label: str, pid: int | None = None, prefix: str = PREFIX) -> str:
    """``<prefix><pid>-<label>``; label must match ``[A-Za-z0-9_-]+``."""
    if not isinstance(label, str) or not _LABEL_RE.match(label):
        raise ValueError(f"ring label {label!r} must match [A-Za-z0-9_-]+")
    name = f"{prefix}{os.getpid() if pid is None else int(pid)}-{label}"
    if len(name) > _NAME_MAX:
        raise ValueError(f"segment name {name!r} is too long")
    return name


def parse_segment_name(name: str, prefix: str = PREFIX) -> tuple[int, str] | None:
    """(owner pid, label) of a segment name, or None if it is not ``<prefix><pid>-<label>``."""
    if not name.startswith(prefix):
        return None
    m = _PID_LABEL_RE.match(name[len(prefix):])
    if m is None:
        return None
    return int(m.group("pid")), m.group("label")


def segment_names(prefix: str = PREFIX) -> list[str]:
    """Names of the segments in /dev/shm that start with ``prefix`` (sorted)."""
    try:
        entries = os.listdir(SHM_DIR)
    except FileNotFoundError:
        return []
    return sorted(n for n in entries if n.startswith(prefix))


# -- processes --------------------------------------------------------------------------------

def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks since boot) from /proc/<pid>/stat, or None."""
    try:
        with open(f"/proc/{int(pid)}/stat", "rb") as f:
            raw = f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError, OSError):
        return None
    # the command name is in parentheses and may contain anything: split after the last ')'
    rest = raw[raw.rfind(b")") + 2:].split()
    try:
        return rest[0].decode(), int(rest[19])
    except (IndexError, ValueError):
        return None


def process_start_time(pid: int) -> int:
    """Start time of a process (clock ticks since boot; 0 if unknown).  With the pid it
    identifies a process even after pid reuse."""
    st = _proc_stat(pid)
    return 0 if st is None else st[1]


def pid_alive(pid: int, start_time: int = 0) -> bool:
    """True if process ``pid`` exists and is not a zombie; when ``start_time`` is given (non-zero)
    the process must also have that start time (otherwise the pid was reused)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, belongs to someone else
    st = _proc_stat(pid)
    if st is None:
        return True  # no /proc information: trust kill(0)
    state, started = st
    if state in ("Z", "X"):
        return False
    if start_time and started != start_time:
        return False
    return True


# -- segments ---------------------------------------------------------------------------------

def _map(fd: int, size: int) -> mmap.mmap:
    flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)  # pre-fault: no page faults on the hot path
    return mmap.mmap(fd, size, flags=flags, prot=mmap.PROT_READ | mmap.PROT_WRITE)


def create_segment(name: str, size: int) -> mmap.mmap:
    """Create a new segment of ``size`` bytes (fails with FileExistsError if the name exists).

    The memory is reserved up front with posix_fallocate, so a full /dev/shm is reported here
    as OSError(ENOSPC) instead of killing the writer with SIGBUS in the middle of a run.
    """
    path = segment_path(name)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, size)
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise OSError(exc.errno, f"cannot reserve {size} bytes for shared-memory segment "
                                         f"{name!r} in {SHM_DIR}: {exc.strerror}") from None
        return _map(fd, size)
    except BaseException:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        raise
    finally:
        os.close(fd)


def open_segment(name: str) -> mmap.mmap:
    """Map an existing segment (whole file).  FileNotFoundError names the segment."""
    path = segment_path(name)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, f"shared-memory segment {name!r} does not exist", path) from None
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            raise ValueError(f"shared-memory segment {name!r} is empty (not initialised)")
        return _map(fd, size)
    finally:
        os.close(fd)


def read_segment_head(name: str, nbytes: int) -> bytes | None:
    """The first ``nbytes`` of a segment without mapping it, or None if unreadable."""
    try:
        with open(segment_path(name), "rb") as f:
            return f.read(nbytes)
    except OSError:
        return None


def unlink_segment(name: str) -> bool:
    """Remove a segment's name (mappings stay valid until unmapped).  False if it was not there."""
    try:
        os.unlink(segment_path(name))
        return True
    except FileNotFoundError:
        return False
