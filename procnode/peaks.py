"""`scipy.signal.find_peaks` on a batch of waveforms: identical results, much faster.

Pulse-height analysis runs find_peaks on every waveform of every batch.  Called once per
waveform it costs ~35 us for a 4096-sample int16 row of a batch (~8 us of it per call
even for a tiny row), which limits a processing node to ~30k waveforms/s per core.  `find_peaks_batch` gives, for every row of a 2-D batch, exactly
what find_peaks gives for that row (same peaks, same property arrays and dtypes,
bit-identical values), computed for the whole batch at once:

* Local maxima (find_peaks' rule, flat plateaus included) are found by comparisons on the
  batch's own dtype: exact, because every supported dtype converts exactly to the float64
  scipy compares.  With a minimum `height` only samples >= height can be peaks: one
  comparison pass writes a mask, which is scanned 8 samples (one uint64 word) at a time,
  and only the few candidates are examined.  Without one, the rule is tested on the
  whole batch.  The batch is read in place (a structured-array field included), never
  converted to float64 for this.
* `plateau_size`, `height` and `threshold` are per-peak tests with scipy's float64
  expressions.
* `distance` (scipy removes peaks sequentially, highest first) is solved for all rows in
  vectorised rounds that give the same result, see `_distance_keep`.
* `prominence`/`width`: scipy's `peak_prominences` runs once on a float64 concatenation
  of the rows that have peaks, each row followed by a NaN, at which every base search
  stops as it would at the row's end (scipy's searches stop at a sample that is not
  <= the peak).  Widths are computed here, vectorised, in row coordinates with scipy's
  float operations (in concatenated coordinates the interpolated positions would round
  differently).

What the vectorised path cannot reproduce exactly goes to scipy.  Rows whose `distance`
conflicts are too tangled for the rounds get scipy's own distance step (`auto`) or the
same sequential rule in Python (`vector`).  Per-sample condition arrays, 64-bit integer
samples and a non-finite `distance` send the whole batch to find_peaks row by row in
`auto` and are a ValueError in `vector`.
"""
from __future__ import annotations

import math
import threading
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import as_strided
from scipy.signal import find_peaks, peak_prominences

try:  # scipy's own distance step (C) for the rows `auto` leaves to scipy, and its warning
    from scipy.signal._peak_finding_utils import PeakPropertyWarning
    from scipy.signal._peak_finding_utils import _select_by_peak_distance
except ImportError:  # pragma: no cover - a scipy that moved them: find_peaks for those rows
    PeakPropertyWarning = RuntimeWarning  # type: ignore[misc, assignment]
    _select_by_peak_distance = None

PEAK_PARAMS = ("height", "threshold", "distance", "prominence", "width", "wlen", "rel_height",
               "plateau_size")
METHODS = ("auto", "vector", "scipy")

#: Sample types the vectorised path handles: all convert exactly to float64.
_VECTOR_DTYPES = frozenset(np.dtype(t) for t in (
    np.int8, np.int16, np.int32, np.uint8, np.uint16, np.uint32,
    np.float16, np.float32, np.float64))
_INT_KEYS = frozenset(("plateau_sizes", "left_edges", "right_edges", "left_bases", "right_bases"))


@dataclass
class Peaks:
    """Peaks of a batch, ordered by (row, position); `properties` as find_peaks returns them."""

    row: np.ndarray
    position: np.ndarray
    properties: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.position.size)


def property_keys(*, height: Any = None, threshold: Any = None, prominence: Any = None,
                  width: Any = None, plateau_size: Any = None, **_: Any) -> list[str]:
    """The keys (in scipy's order) of the properties find_peaks returns for these parameters."""
    keys = []
    if plateau_size is not None:
        keys += ["plateau_sizes", "left_edges", "right_edges"]
    if height is not None:
        keys.append("peak_heights")
    if threshold is not None:
        keys += ["left_thresholds", "right_thresholds"]
    if prominence is not None or width is not None:
        keys += ["prominences", "left_bases", "right_bases"]
    if width is not None:
        keys += ["widths", "width_heights", "left_ips", "right_ips"]
    return keys


def find_peaks_batch(x: np.ndarray, *, height: Any = None, threshold: Any = None,
                     distance: Any = None, prominence: Any = None, width: Any = None,
                     wlen: Any = None, rel_height: Any = 0.5, plateau_size: Any = None,
                     method: str = "auto") -> Peaks:
    """`scipy.signal.find_peaks` on every row of `x` (n_waveforms, samples), as one result.

    The peaks with ``row == i`` and their properties are identical to
    ``find_peaks(x[i], ...)``.  `method`: "scipy" calls find_peaks per row (reference),
    "vector" uses only the vectorised path (ValueError for parameters it cannot do
    exactly), "auto" vectorises what it can and calls scipy only for the rows (or, for
    unsupported parameters, the batch) where it could not guarantee identical results.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"x must be 2-D (n_waveforms, samples), got shape {x.shape}")
    kw = dict(height=height, threshold=threshold, distance=distance, prominence=prominence,
              width=width, wlen=wlen, rel_height=rel_height, plateau_size=plateau_size)
    _validate(kw)
    if method == "scipy":
        return _scipy_rows(x, np.arange(x.shape[0]), kw)
    why = _unsupported(x.dtype, kw)
    if why:
        if method == "vector":
            raise ValueError(f"method='vector' cannot reproduce find_peaks exactly here: {why}; "
                             "use method='auto' or 'scipy'")
        return _scipy_rows(x, np.arange(x.shape[0]), kw)
    if not x.dtype.isnative:
        x = x.astype(x.dtype.newbyteorder("="))
    peaks, fallback = _vector(x, kw, resolve_distance=(method == "vector"))
    if fallback.size == 0:
        return peaks
    return _merge(peaks, _scipy_rows(x, fallback, kw))


# ---------------------------------------------------------------------------- parameters
def _validate(kw: dict) -> None:
    """The errors find_peaks raises for bad scalar parameters, raised once for the batch."""
    d = kw["distance"]
    if d is not None and d < 1:
        raise ValueError("`distance` must be greater or equal to 1")
    if kw["prominence"] is not None or kw["width"] is not None:
        w = kw["wlen"]
        if w is not None and not 1 < w:
            raise ValueError(f"`wlen` must be larger than 1, was {w}")
    if kw["width"] is not None and kw["rel_height"] < 0:
        raise ValueError("`rel_height` must be greater or equal to 0.0")


def _unpack(interval: Any) -> tuple[Any, Any]:
    """(min, max) of a condition exactly as scipy's `_unpack_condition_args` reads it."""
    try:
        imin, imax = interval
    except (TypeError, ValueError):
        imin, imax = interval, None
    return imin, imax


def _is_scalar(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, np.ndarray) or np.ndim(v) != 0:
        return False
    # long double or Python objects could compare with other rounding than float64
    return isinstance(v, (int, float, np.integer, np.floating)) and np.asarray(v).itemsize <= 8


def _unsupported(dtype: np.dtype, kw: dict) -> str:
    """Why the vectorised path cannot give identical results, or '' if it can."""
    if dtype.newbyteorder("=") not in _VECTOR_DTYPES:
        return f"dtype {dtype} (only 8..32-bit integers and floats convert exactly to float64)"
    for name in ("height", "threshold", "prominence", "width", "plateau_size"):
        if kw[name] is not None and not all(_is_scalar(v) for v in _unpack(kw[name])):
            return f"`{name}` is not a scalar or a (min, max) pair of scalars"
    d = kw["distance"]
    if d is not None and not (_is_scalar(d) and math.isfinite(float(d)) and float(d) < 2.0 ** 62):
        return "`distance` is not a finite scalar"
    if kw["width"] is not None and not _is_scalar(kw["rel_height"]):
        return "`rel_height` is not a scalar"
    return ""


def _select(values: np.ndarray, pmin: Any, pmax: Any) -> np.ndarray | None:
    """scipy's `_select_by_property` (same expressions); None when nothing is tested."""
    keep = None
    if pmin is not None:
        keep = pmin <= values
    if pmax is not None:
        k = values <= pmax
        keep = k if keep is None else keep & k
    return keep


# ---------------------------------------------------------------------------- reference path
def _scipy_rows(x: np.ndarray, rows: np.ndarray, kw: dict) -> Peaks:
    """find_peaks row by row (the reference, and the fallback of `auto`)."""
    keys = property_keys(**kw)
    pos, rw, props = [], [], {k: [] for k in keys}
    for i in rows.tolist():
        p, pr = find_peaks(x[i], **kw)
        pos.append(p)
        rw.append(np.full(p.size, i, dtype=np.int64))
        for k in keys:
            props[k].append(pr[k])
    return Peaks(_cat(rw, np.int64), _cat(pos, np.int64),
                 {k: _cat(v, np.intp if k in _INT_KEYS else np.float64) for k, v in props.items()})


def _cat(parts: list, dtype: Any) -> np.ndarray:
    return np.concatenate(parts) if parts else np.empty(0, dtype)


def _merge(a: Peaks, b: Peaks) -> Peaks:
    """Two results over disjoint rows, merged into (row, position) order."""
    order = np.argsort(np.concatenate([a.row, b.row]), kind="stable")
    return Peaks(np.concatenate([a.row, b.row])[order],
                 np.concatenate([a.position, b.position])[order],
                 {k: np.concatenate([a.properties[k], b.properties[k]])[order] for k in a.properties})


# ---------------------------------------------------------------------------- vectorised path
def _span(x: np.ndarray) -> tuple[np.ndarray, int]:
    """A 1-D view on x's memory in which sample (r, c) is at r * rs + c, and rs.

    Rows of a structured-array field (``records["IN1"]``) are equally spaced in memory, so
    a 1-D view over their span serves all gathers without copying the batch.  Other
    layouts are copied once.
    """
    n, S = x.shape
    isz = x.itemsize
    s0, s1 = x.strides
    if n > 0 and S > 0 and s1 == isz and s0 % isz == 0 and s0 // isz >= S:
        rs = s0 // isz
        return as_strided(x, shape=((n - 1) * rs + S,), strides=(isz,), writeable=False), rs
    xc = np.ascontiguousarray(x)
    return xc.reshape(-1), S


def _threshold(dtype: np.dtype, hmin: Any) -> Any:
    """A value t of `dtype` such that x >= t keeps every sample scipy's height test keeps.

    Returns None when no sample can pass, "all" when every sample can.
    """
    hf = float(hmin)
    if math.isnan(hf):
        return None
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if hf == -math.inf or hf <= info.min:
            return "all"
        if hf > info.max:
            return None
        return dtype.type(math.ceil(hf))  # integer x >= hf  <=>  x >= ceil(hf)
    if hf == -math.inf:
        return "all"
    # Rounded to the nearest value of dtype: if it rounded up it is the smallest one >= hf,
    # if it rounded down x >= t keeps more than needed; either way nothing is lost.
    with np.errstate(over="ignore"):
        return dtype.type(hf)


_scratch = threading.local()


def _scratch_mask(size: int) -> np.ndarray:
    """A bool buffer of `size` kept per thread: a fresh MB-sized array per batch costs
    page faults (the kernel zeroes every page) unless malloc keeps freed memory."""
    buf = getattr(_scratch, "mask", None)
    if buf is None or buf.size < size:
        buf = _scratch.mask = np.empty(size, bool)
    return buf[:size]


def _scan(arr: np.ndarray, start: np.ndarray, limit: np.ndarray, step: int, stop: Any,
          chunk: int = 16) -> np.ndarray:
    """For each k the first index i of start[k], start[k] + step, ... at which i == limit[k]
    or ``stop(arr[i], k)`` holds (vectorised over k, in chunks that double).

    `limit` must be reachable from `start` going by `step`; ``stop`` gets the gathered
    values (m, chunk) and the indices k (m,) of the rows still searching.
    """
    out = np.empty(start.size, np.intp)
    todo = np.arange(start.size)
    pos = start.astype(np.intp, copy=True)
    lim = limit.astype(np.intp, copy=False)
    while todo.size:
        idx = pos[:, None] + step * np.arange(chunk)
        li = lim[todo][:, None]
        idx = np.minimum(idx, li) if step > 0 else np.maximum(idx, li)
        hit = (idx == li) | stop(arr[idx], todo)
        first = hit.argmax(axis=1)
        found = hit[np.arange(todo.size), first]  # always true once the limit is in the chunk
        out[todo[found]] = idx[found, first[found]]
        pos = pos[~found] + step * chunk
        todo = todo[~found]
        chunk *= 2
    return out


def _local_maxima(x: np.ndarray, span: np.ndarray, rs: int, hmin: Any) -> tuple[np.ndarray, ...]:
    """find_peaks' local maxima of all rows: (row, span index of the left edge, of the right
    edge, mask of the valid ones or None), by row and position.

    A peak is a run of equal samples whose left neighbour is strictly lower and whose
    first different sample on the right is strictly lower; neither the first nor the
    last sample of a row is ever part of one.  Candidates are the rising samples whose
    right neighbour is not higher; those whose right neighbour is equal start a plateau,
    whose end is found by a scan (invalid if the sample after it is not lower).
    """
    n, S = x.shape
    empty = np.empty(0, np.intp)
    if S < 3 or n == 0:
        return empty, empty, empty, None
    t = "all" if hmin is None else _threshold(x.dtype, hmin)
    if t is None:
        return empty, empty, empty, None
    N = n * S
    mid, left, right = x[:, 1:-1], x[:, :-2], x[:, 2:]
    mbuf = _scratch_mask(8 + -(-N // 8) * 8)   # a zero word in front, zero padding behind
    mbuf[:8] = False
    mbuf[8 + N:] = False
    m = mbuf[8: 8 + N].reshape(n, S)
    rows = None
    if not isinstance(t, str):
        # Only samples >= height can be peaks (plateau members share the peak's value).
        # The mask is scanned 8 samples (one uint64 word) at a time: flatnonzero over the
        # words is several times cheaper than over the samples, and pulses put their
        # candidates next to each other, so the words that hold any are few.
        np.greater_equal(x, t, out=m)
        m[:, 0] = False
        m[:, -1] = False
        words = mbuf.view(np.uint64)
        wi = np.flatnonzero(words != 0)
        dense = wi.size * 8 > N // 8
        if not dense:
            lane = np.flatnonzero(words.take(wi).view(bool))   # candidates in those words
            w0 = (wi - 1) * 8                                  # sample index of each word
            word = lane >> 3
            lane &= 7
            if rs == S or S % 8 == 0:                          # words do not straddle rows
                if rs != S:
                    w0 += (w0 // S) * (rs - S)
                si = w0.take(word)
                si += lane
            else:
                si = w0.take(word)
                si += lane
                si += (si // S) * (rs - S)
            v = span.take(si)
            nxt = span.take(si + 1)
            sel = span.take(si - 1) < v
            sel &= nxt <= v
            k = np.flatnonzero(sel)
            si, v, nxt = si[k], v[k], nxt[k]
            rows = si // rs
        else:
            m[:, 1:-1] &= np.greater(mid, left)
    else:
        np.greater(mid, left, out=m[:, 1:-1])
        m[:, 0] = False
        m[:, -1] = False
    if rows is None:
        # candidates are dense: test the rule on the whole batch
        m[:, 1:-1] &= np.less_equal(right, mid)
        c = np.flatnonzero(m)
        rows = c >> (S.bit_length() - 1) if S & (S - 1) == 0 else c // S
        si = c if rs == S else c + rows * (rs - S)
        v = span.take(si)
        nxt = span.take(si + 1)
    right_si = si.copy()
    valid = None
    plat = np.flatnonzero(nxt == v)
    if plat.size:
        ps = si[plat]
        pv = v[plat]
        row_end = rows[plat] * rs + (S - 1)
        j = _scan(span, ps + 1, row_end, 1, lambda vals, k: vals != pv[k][:, None], chunk=4)
        right_si[plat] = j - 1
        ok = span.take(j) < pv
        if not ok.all():
            valid = np.ones(si.size, bool)
            valid[plat[~ok]] = False
    return rows, si, right_si, valid


def _vector(x: np.ndarray, kw: dict, resolve_distance: bool) -> tuple[Peaks, np.ndarray]:
    """The vectorised find_peaks of every row, and the rows left to scipy (auto only)."""
    n, S = x.shape
    span, rs = _span(x)
    hmin, hmax = _unpack(kw["height"]) if kw["height"] is not None else (None, None)
    rows, lsi, rsi, keep = _local_maxima(x, span, rs, hmin)
    rowbase = rows * rs
    psi = (lsi + rsi) // 2           # same parity in row coordinates: rowbase cancels out
    props: dict[str, np.ndarray] = {}

    def both(a, b):
        return b if a is None else (a if b is None else a & b)

    if kw["plateau_size"] is not None:
        sizes = rsi - lsi + 1
        keep = both(keep, _select(sizes, *_unpack(kw["plateau_size"])))
        props["plateau_sizes"] = sizes
        props["left_edges"] = lsi - rowbase
        props["right_edges"] = rsi - rowbase
    heights = None
    if kw["height"] is not None or kw["threshold"] is not None or kw["distance"] is not None:
        heights = span.take(psi).astype(np.float64)   # x[peaks] of scipy's float64 x
    if kw["height"] is not None:
        keep = both(keep, _select(heights, hmin, hmax))
        props["peak_heights"] = heights
    if kw["threshold"] is not None:
        lt = heights - span.take(psi - 1)
        rt = heights - span.take(psi + 1)
        tmin, tmax = _unpack(kw["threshold"])
        if tmin is not None:
            keep = both(keep, tmin <= np.minimum(lt, rt))
        if tmax is not None:
            keep = both(keep, np.maximum(lt, rt) <= tmax)
        props["left_thresholds"], props["right_thresholds"] = lt, rt
    if keep is not None:
        rows, psi, rowbase = rows[keep], psi[keep], rowbase[keep]
        heights = None if heights is None else heights[keep]
        props = {k: a[keep] for k, a in props.items()}
    pos = psi - rowbase

    fallback = np.empty(0, np.int64)
    if kw["distance"] is not None and pos.size > 1:
        dist = math.ceil(float(kw["distance"]))
        keep, hard = _distance_keep(rows, pos, heights, dist, S)
        if hard.size:
            if resolve_distance or _select_by_peak_distance is not None:
                lo = np.searchsorted(rows, hard, "left")
                hi = np.searchsorted(rows, hard, "right")
                for a, b in zip(lo.tolist(), hi.tolist()):
                    if resolve_distance:     # `vector`: the sequential rule, here
                        keep[a:b] = _select_by_distance(pos[a:b], heights[a:b], dist)
                    else:                    # `auto`: scipy's own step, on scipy's inputs
                        keep[a:b] = _select_by_peak_distance(
                            np.array(pos[a:b], dtype=np.intp), np.array(heights[a:b]),
                            float(kw["distance"]))
            else:
                fallback = hard.astype(np.int64)
                keep &= ~np.isin(rows, hard)
        if keep is not None:
            rows, pos = rows[keep], pos[keep]
            props = {k: a[keep] for k, a in props.items()}

    if kw["prominence"] is not None or kw["width"] is not None:
        rows, pos, props = _prominence_width(x, kw, rows, pos, props)
    return Peaks(rows.astype(np.int64, copy=False), pos.astype(np.int64, copy=False), props), fallback


#: Past these, `distance` conflicts of a row are resolved row by row (see _distance_keep).
_MAX_NEIGHBOURS = 16
_MAX_ROUNDS = 32


def _distance_keep(rows: np.ndarray, pos: np.ndarray, heights: np.ndarray, dist: int,
                   S: int) -> tuple[np.ndarray | None, np.ndarray]:
    """scipy's distance rule for all rows at once: (keep mask or None, rows left undecided).

    scipy keeps peaks in decreasing priority (the order of ``np.argsort(heights)`` of the
    row, reversed), each removing the peaks closer than `dist` to it.  That sequential
    rule gives the same result as rounds in which every undecided peak that outranks all
    its undecided neighbours is kept and its neighbours removed (both give the
    lexicographically first maximal independent set in priority order), and the rounds
    vectorise.  Only the order between neighbours matters: it is the order of their
    heights, except between equal heights, where it is that of scipy's ``np.argsort`` on
    the row's heights, which is called per row (the same call on the same values) for
    the rows with such ties.  Rows with more than `_MAX_NEIGHBOURS` peaks within `dist`
    of one peak, or still undecided after `_MAX_ROUNDS` rounds, are returned undecided.
    """
    dist = min(dist, S)                         # positions in a row differ by < S anyway
    key = rows * (S + dist) + pos              # rows further apart than `dist`
    close = key[1:] - key[:-1] < dist
    if not close.any():
        return None, np.empty(0, np.intp)
    # peaks with a neighbour within dist (their neighbours have one too); the others stay
    inv = np.zeros(pos.size, bool)
    inv[1:] |= close
    inv[:-1] |= close
    idx = np.flatnonzero(inv)
    k, h, r = key[idx], heights[idx], rows[idx]
    m = idx.size
    reach = np.searchsorted(k, k + dist - 1, "right") - np.arange(m) - 1
    K = int(reach.max())
    undecided_rows = np.empty(0, np.intp)
    if K > _MAX_NEIGHBOURS:
        hard_rows = np.unique(r[reach > _MAX_NEIGHBOURS])
        ok = ~np.isin(r, hard_rows)
        idx, k, h, r = idx[ok], k[ok], h[ok], r[ok]
        m = idx.size
        reach = np.searchsorted(k, k + dist - 1, "right") - np.arange(m) - 1
        K = int(reach.max()) if m else 0
        undecided_rows = hard_rows
    # neighbour pairs (i, i + o) within dist, o = 1..K
    pairs = [(o, np.flatnonzero(reach >= o)) for o in range(1, K + 1)]
    # priorities: the heights, or scipy's argsort rank in rows where neighbours tie
    prio = h.astype(np.float64, copy=True)
    tied = [r[i[h[i] == h[i + o]]] for o, i in pairs]
    tied_rows = np.unique(np.concatenate(tied)) if tied else np.empty(0, np.intp)
    if tied_rows.size:
        bounds = np.searchsorted(rows, np.r_[tied_rows, tied_rows + 1]).reshape(2, -1)
        sub = np.searchsorted(r, np.r_[tied_rows, tied_rows + 1]).reshape(2, -1)
        for a, b, sa, sb in zip(*bounds.tolist(), *sub.tolist()):
            # a fresh array like scipy's x[peaks], so that argsort sees exactly what it sees
            order = np.argsort(np.array(heights[a:b], dtype=np.float64))
            rank = np.empty(b - a, np.float64)
            rank[order] = np.arange(b - a)
            prio[sa:sb] = rank[idx[sa:sb] - a]
    state = np.zeros(m, np.int8)               # 0 undecided, 1 kept, 2 removed
    for _ in range(_MAX_ROUNDS):
        und = state == 0
        if not und.any():
            break
        top = und.copy()
        for o, i in pairs:
            j = i + o
            both = und[i] & und[j]
            bi, bj = i[both], j[both]
            hi = prio[bj] > prio[bi]
            top[bi[hi]] = False
            top[bj[~hi]] = False
        state[top] = 1
        for o, i in pairs:
            j = i + o
            state[j[top[i] & (state[j] == 0)]] = 2
            state[i[top[j] & (state[i] == 0)]] = 2
    keep = np.ones(pos.size, bool)
    keep[idx[state == 2]] = False
    left = state == 0
    if left.any():
        undecided_rows = np.union1d(undecided_rows, r[left])
    return keep, undecided_rows


def _select_by_distance(peaks: np.ndarray, heights: np.ndarray, distance: int) -> np.ndarray:
    """scipy's `_select_by_peak_distance` for one row: highest first, neighbours closer
    than `distance` removed.  Ties are ordered by the same ``np.argsort`` call on the
    same float64 values, so the outcome is scipy's."""
    peaks = np.ascontiguousarray(peaks, dtype=np.intp).tolist()
    order = np.argsort(np.ascontiguousarray(heights, dtype=np.float64)).tolist()
    n = len(peaks)
    keep = [True] * n
    for j in reversed(order):
        if not keep[j]:
            continue
        k = j - 1
        while k >= 0 and peaks[j] - peaks[k] < distance:
            keep[k] = False
            k -= 1
        k = j + 1
        while k < n and peaks[k] - peaks[j] < distance:
            keep[k] = False
            k += 1
    return np.array(keep, dtype=bool)


def _prominence_width(x: np.ndarray, kw: dict, rows: np.ndarray, pos: np.ndarray,
                      props: dict) -> tuple[np.ndarray, np.ndarray, dict]:
    """Prominences (scipy, once on NaN-separated rows) and widths (here, in row coordinates)."""
    n, S = x.shape
    if pos.size:
        starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
        urows = rows[starts]
        slot = np.cumsum(np.r_[True, rows[1:] != rows[:-1]]) - 1  # each peak's row in buf
    else:
        urows = slot = np.empty(0, np.intp)
    buf = np.empty((urows.size, S + 1), np.float64)
    buf[:, S] = np.nan     # stops every base search: NaN <= x[peak] is false
    buf[:, :S] = x if urows.size == n else x[urows]
    flat = buf.reshape(-1)
    off = slot * (S + 1)
    pc = off + pos
    prom, lb, rb = peak_prominences(flat, pc, wlen=kw["wlen"])
    props["prominences"] = prom
    props["left_bases"] = lb - off
    props["right_bases"] = rb - off
    if kw["prominence"] is not None:
        keep = _select(prom, *_unpack(kw["prominence"]))
        if keep is not None:
            rows, pos, pc, off, lb, rb = rows[keep], pos[keep], pc[keep], off[keep], lb[keep], rb[keep]
            props = {k: a[keep] for k, a in props.items()}
            prom = props["prominences"]
    if kw["width"] is None:
        return rows, pos, props

    # scipy's _peak_widths, vectorised; the same float64 operations in the same order
    hgt = flat.take(pc) - prom * float(kw["rel_height"])
    li = _scan(flat, pc, lb, -1, lambda vals, k: ~(hgt[k][:, None] < vals))
    ri = _scan(flat, pc, rb, 1, lambda vals, k: ~(hgt[k][:, None] < vals))
    left_ip = (li - off).astype(np.float64)
    right_ip = (ri - off).astype(np.float64)
    xl, xr = flat.take(li), flat.take(ri)
    m = np.flatnonzero(xl < hgt)
    if m.size:
        a, b = xl[m], flat.take(li[m] + 1)
        m2 = b != a
        m, a, b = m[m2], a[m2], b[m2]
        left_ip[m] += (hgt[m] - a) / (b - a)
    m = np.flatnonzero(xr < hgt)
    if m.size:
        a, b = xr[m], flat.take(ri[m] - 1)
        m2 = b != a
        m, a, b = m[m2], a[m2], b[m2]
        right_ip[m] -= (hgt[m] - a) / (b - a)
    widths = right_ip - left_ip
    if np.any(widths == 0):
        warnings.warn("some peaks have a width of 0", PeakPropertyWarning, stacklevel=4)
    props.update(widths=widths, width_heights=hgt, left_ips=left_ip, right_ips=right_ip)
    keep = _select(widths, *_unpack(kw["width"]))
    if keep is not None:
        rows, pos = rows[keep], pos[keep]
        props = {k: a[keep] for k, a in props.items()}
    return rows, pos, props
