"""Frame record layout shared by rings, wire messages and files (contract).

A frame is one NumPy structured record: a fixed header followed by one
sub-array per channel.  Because header and samples live in one record, a run of
consecutive ring slots is a single contiguous buffer that can be shipped and
stored as is, and a receiver gets seq/timestamp of every frame of a batch as
plain array columns without any per-frame parsing.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

#: Header fields of every frame record, in this order, before the channels.
HEADER_FIELDS: list[tuple[str, str]] = [
    ("seq", "<u8"),        # event number of the stream, 0 at run start
    ("timestamp", "<u8"),  # acquisition (trigger) time in ns
    ("flags", "<u4"),      # FLAG_* bits
    ("reserved", "<u4"),   # keeps the header 24 bytes; 0
]
HEADER_NAMES = tuple(name for name, _ in HEADER_FIELDS)
HEADER_SIZE = int(np.dtype(HEADER_FIELDS).itemsize)

#: Frame flag bits.
FLAG_SATURATED = 1 << 0   # a sample hit the digitiser's range
FLAG_SOURCE_WARNING = 1 << 1  # the source reported something odd about this frame
FLAG_TIME_APPROX = 1 << 2   # timestamp is the host's time of the readout, not the board's trigger time
FLAG_INCOMPLETE = 1 << 3    # event: a module's part never arrived (see the event's `present` mask)
FLAG_TIME_MISMATCH = 1 << 4  # event: its parts' timestamps differ by more than the tolerance

#: Flag names as the topology and files spell them.
FLAG_BITS = {"saturated": FLAG_SATURATED, "source_warning": FLAG_SOURCE_WARNING,
             "time_approx": FLAG_TIME_APPROX, "incomplete": FLAG_INCOMPLETE,
             "time_mismatch": FLAG_TIME_MISMATCH}

#: Channel sample types accepted in a topology (numeric scalars only).
CHANNEL_KINDS = "iuf"


def channel_dtype(spec: str) -> np.dtype:
    """Parse one channel's sample type; raise ValueError with a reason if NumPy or we reject it."""
    try:
        dt = np.dtype(spec)
    except TypeError as exc:
        raise ValueError(f"NumPy does not know the dtype {spec!r} ({exc})") from None
    if dt.kind not in CHANNEL_KINDS or dt.fields is not None or dt.subdtype is not None:
        raise ValueError(f"dtype {spec!r} is not a numeric scalar type (int*, uint*, float*)")
    return dt.newbyteorder("<") if dt.itemsize > 1 else dt


def frame_dtype(channels: Mapping[str, str | np.dtype], samples: int) -> np.dtype:
    """The record dtype of a stream: header fields, then one (samples,) field per channel."""
    if samples < 1:
        raise ValueError("samples must be >= 1")
    fields: list[tuple] = list(HEADER_FIELDS)
    for name, spec in channels.items():
        if name in HEADER_NAMES:
            raise ValueError(f"channel name {name!r} clashes with a header field")
        fields.append((name, channel_dtype(str(spec)) if not isinstance(spec, np.dtype) else spec, (samples,)))
    return np.dtype(fields)


def channel_names(dtype: np.dtype) -> list[str]:
    """Names of the channel fields of a frame dtype, in order."""
    return [n for n in dtype.names if n not in HEADER_NAMES]


def dtype_signature(dtype: np.dtype) -> str:
    """A short stable text that two nodes compare to agree on a frame layout."""
    parts = []
    for n in dtype.names:
        ft = dtype.fields[n][0]
        shape = "x".join(map(str, ft.shape))
        parts.append(f"{n}={ft.base.str}" + (f"[{shape}]" if shape else ""))
    return f"{dtype.itemsize}:" + ",".join(parts)
