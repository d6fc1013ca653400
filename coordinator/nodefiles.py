"""Reading processing-node files (contract: layout in procnode/hdf5sink.py, docs/architecture.md).

The coordinator reads node files when a node could not report (lost, crashed):
what it had flushed is kept and counted as saved, not declared lost.
"""
from __future__ import annotations

from pathlib import Path

import h5py

from coordinator.ranges import RangeSet


def saved_in_file(path: Path) -> dict[str, list[tuple[int, int]]]:
    """module -> seq ranges present in a node file: raw parts (/entry/<stream>) and the
    events tables (/entry/reduced/events*, which a reduced-only or sparse save also writes).

    Opens the file read-only in SWMR mode, so a file whose writer died mid-run is read up
    to its last flush.
    """
    out: dict[str, RangeSet] = {}
    with h5py.File(path, "r", libver="latest", swmr=True) as f:
        entry = f["entry"]
        for group in entry.values():
            if group.attrs.get("NX_class") == "NXdata" and "module" in group:
                seq, module = group["seq"][()], group["module"][()]
                for i, name in enumerate(_names(group["module"])):
                    out.setdefault(name, RangeSet()).add_seqs(seq[module == i])
        for name, group in entry.get("reduced", {}).items():
            if (name == "events" or name.startswith("events_")) and "present" in group:
                seq, present = group["seq"][()], group["present"][()]
                for i, module in enumerate(_names(group["present"])):
                    out.setdefault(module, RangeSet()).add_seqs(seq[(present & (1 << i)) != 0])
    return {m: list(r) for m, r in out.items()}


def _names(ds: h5py.Dataset) -> list[str]:
    return [n.decode() if isinstance(n, bytes) else str(n) for n in ds.attrs["names"]]


_M = 0xFFFFFFFF


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _M


def lookup3(data: bytes, initval: int = 0) -> int:
    """Bob Jenkins' lookup3 `hashlittle`, the checksum HDF5 puts on its v2/v3 superblock."""
    length = len(data)
    a = b = c = (0xDEADBEEF + length + initval) & _M
    i = 0
    while length - i > 12:
        a = (a + int.from_bytes(data[i:i + 4], "little")) & _M
        b = (b + int.from_bytes(data[i + 4:i + 8], "little")) & _M
        c = (c + int.from_bytes(data[i + 8:i + 12], "little")) & _M
        a = (a - c) & _M; a ^= _rot(c, 4); c = (c + b) & _M    # noqa: E702 (the mix, as published)
        b = (b - a) & _M; b ^= _rot(a, 6); a = (a + c) & _M    # noqa: E702
        c = (c - b) & _M; c ^= _rot(b, 8); b = (b + a) & _M    # noqa: E702
        a = (a - c) & _M; a ^= _rot(c, 16); c = (c + b) & _M   # noqa: E702
        b = (b - a) & _M; b ^= _rot(a, 19); a = (a + c) & _M   # noqa: E702
        c = (c - b) & _M; c ^= _rot(b, 4); b = (b + a) & _M    # noqa: E702
        i += 12
    tail = data[i:]
    if not tail:
        return c
    tail = tail + bytes(12 - len(tail))
    a = (a + int.from_bytes(tail[0:4], "little")) & _M
    b = (b + int.from_bytes(tail[4:8], "little")) & _M
    c = (c + int.from_bytes(tail[8:12], "little")) & _M
    c = ((c ^ b) - _rot(b, 14)) & _M
    a = ((a ^ c) - _rot(c, 11)) & _M
    b = ((b ^ a) - _rot(a, 25)) & _M
    c = ((c ^ b) - _rot(b, 16)) & _M
    a = ((a ^ c) - _rot(c, 4)) & _M
    b = ((b ^ a) - _rot(a, 14)) & _M
    c = ((c ^ b) - _rot(b, 24)) & _M
    return c


SIGNATURE = b"\x89HDF\r\n\x1a\n"


def clear_write_flags(path: Path) -> str:
    """Clear the 'open for write' flags a crashed writer leaves in a file (as `h5clear -s`).

    Only for a file whose writer is known to be dead.  Touches one byte and the superblock
    checksum, after checking that the stored checksum is the one we compute.  Returns
    "cleared", "clean" (nothing to do), or "" (not a file we recognise: nothing changed).
    """
    with open(path, "r+b") as f:
        head = f.read(64)
        if len(head) < 12 or head[:8] != SIGNATURE or head[8] not in (2, 3):
            return ""
        size = 12 + 4 * head[9] + 4          # fixed part, four addresses, checksum
        body, stored = head[:size - 4], head[size - 4:size]
        if len(stored) != 4 or lookup3(body).to_bytes(4, "little") != stored:
            return ""
        if head[11] == 0:
            return "clean"
        fixed = body[:11] + b"\x00" + body[12:]
        f.seek(0)
        f.write(fixed + lookup3(fixed).to_bytes(4, "little"))
    return "cleared"
