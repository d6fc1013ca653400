"""Live terminal view of a run (rich), its plain-line form for logs, and the end-of-run summary.

`LiveDisplay` (stderr is a terminal) redraws, at most every REFRESH s, from the coordinator's
single-threaded loop (`Coordinator.pump` calls `update(coord)`; nothing here runs on a thread
of its own, and nothing is asked of the nodes: every number is one the coordinator already
holds from the stats messages nodes send every 0.5 s):

- header: run name and number, run state (and stop reason), elapsed time since the start
  (until the stop, once stopped), frames saved (sum of the processing nodes' `saved`
  counters, earlier incarnations of rejoined nodes included);
- a progress bar toward the stop condition: produced frames of the acquisition nodes vs
  `run.frames` or a one-shot capture's burst (`Topology.frames_limit`) (while running, a
  node whose source ended or that is lost counts as done; once stopped, the bar shows what
  was produced), elapsed vs `run.duration`, both bars if both are set, none when the run is
  open-ended;
- one row per node:

  ========  ==================================================================================
  node      node name
  role      acq (acquisition) or proc (processing)
  host      the topology host it runs on (`local`: this machine)
  state     the node's own state; `lost` in red once the coordinator declared it lost
  frames    acq: frames written to the ring (`frames`); proc: frames received (`frames`)
  frames/s  change of `frames` between the last two stats messages
  MB/s      acq: bytes sent (`sent_bytes`); proc: bytes received (`recv_bytes`), per second
  ring      acq: ring fill as a bar and `ring_fill/ring_slots` (green, yellow >= 50 %, red >= 90 %)
  credits   acq: credits it holds from its processing nodes (`credits`, sum over peers)
  dead      acq: seconds its senders were held back waiting for credit (`stalled_s` summed
            over peers, the wait going on now included), plus the source's own dead time
            (`dead_s`) if a node reports one (none does yet: the reader knows when it waits
            for a free ring slot, but does not tell the node)
  losses    by cause, only the non-zero ones: `ovf` frames dropped on a full ring
            (`overflow`, ring policy drop), `rej` data messages rejected (`rejected`: acq,
            malformed credit messages; proc, bad data messages, whose seqs are booked as
            corrupt), `ctl` control messages rejected (`rejected_control`); `0` when none
  CPU %     CPU time per wall second of the node process, its reader process included
  mem       resident memory (`rss_bytes`, from /proc/self/statm); acq: plus the reader's
            private resident memory (`reader_rss_bytes - reader_shared_bytes`, so the ring's
            shared pages count once)
  ========  ==================================================================================

- with a `Keyboard` (coordinator/keyboard.py), the keys line under the table while the run
  runs or is paused (`p` pause/resume, `s` stop, `a` twice abort);
- the last LOG_LINES lines of the run's log.txt (only the file's last LOG_TAIL_BYTES are
  read, and only when its size or time changed).

Terminal size: when the table does not fit the width, columns are dropped in this order
(first dropped first): host, role, mem, credits, CPU %, MB/s, dead, frames, ring, losses;
node, state and frames/s always stay.  When the terminal is short, the log lines go first
(5 down to 0), so the node table stays whole.

`PlainLines` (stderr is not a terminal: batch jobs, redirection) prints one line per node
every PLAIN_PERIOD s, and a last set when the run is over, so logs stay readable::

    12:03:04 rp1 running frames=5120 fps=2000 MB/s=32.8 ring=12/256 credits=8 dead=0.0s lost=0 cpu=23% rss=85MB

(`-` where a figure does not apply to the node, e.g. ring, credits and dead of a processing node.)
"""
from __future__ import annotations

import os
import time
from typing import Any, Callable

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from coordinator.rundir import last_lines

REFRESH = 0.25        # s between redraws of the live view
PLAIN_PERIOD = 5.0    # s between sets of plain lines
LOG_LINES = 5
LOG_TAIL_BYTES = 8192
RING_BAR = 8          # characters of the ring-fill bar

#: (key, header, right-justified, drop rank: 0 = never dropped, else dropped in rank order)
COLUMNS = [
    ("node", "node", False, 0),
    ("role", "role", False, 2),
    ("host", "host", False, 1),
    ("state", "state", False, 0),
    ("frames", "frames", True, 8),
    ("fps", "frames/s", True, 0),
    ("mbps", "MB/s", True, 6),
    ("ring", "ring", False, 9),
    ("credits", "credits", True, 4),
    ("dead", "dead", True, 7),
    ("losses", "losses", False, 10),
    ("cpu", "CPU %", True, 5),
    ("mem", "mem", True, 3),
]
STATE_STYLE = {"running": "green", "lost": "bold red", "failed": "bold red", "fault": "bold red",
               "stopping": "yellow", "draining": "yellow", "paused": "bold yellow", "exited": "dim",
               "ended": "cyan", "stopped": "cyan"}


# ------------------------------------------------------------------ figures (shared by both views)
def node_figures(n: Any) -> dict[str, Any]:
    """The numbers of one node's row (None where a figure does not apply to it)."""
    c, r = n.counters, n.rates
    acq = n.role == "acquisition"
    losses = {"ovf": c.get("overflow", 0) or 0, "rej": c.get("rejected", 0) or 0,
              "ctl": c.get("rejected_control", 0) or 0}
    rss = (c.get("rss_bytes") or 0) + max(0, (c.get("reader_rss_bytes") or 0) - (c.get("reader_shared_bytes") or 0))
    return {
        "state": "lost" if n.lost else n.state,
        "frames": c.get("frames", 0),
        "fps": r.get("frames_per_s", 0.0),
        "mbps": r.get("MB_per_s", 0.0),
        "fill": c.get("ring_fill") if acq else None,
        "slots": c.get("ring_slots") if acq else None,
        "credits": c.get("credits") if acq else None,
        "dead": (sum((c.get("stalled_s") or {}).values()) + (c.get("dead_s") or 0.0)) if acq and c else None,
        "losses": {k: v for k, v in losses.items() if v},
        "cpu": r.get("cpu_percent"),
        "rss": rss or None,
    }


def frames_saved(coord: Any) -> int:
    """Sum of the processing nodes' `saved` counters (earlier incarnations of rejoined nodes too)."""
    return sum(n.counters.get("saved", 0) + sum(p["counters"].get("saved", 0) for p in n.past)
               for n in coord.nodes.values() if n.role == "processing")


def elapsed_s(coord: Any, now: float) -> float:
    """Seconds since the run started; once it stopped, until it stopped (from the state history)."""
    if not coord.run_started:
        return 0.0
    if coord.stop_reason:
        times = {h["event"]: h["time"] for h in coord.sm.history}
        if "start" in times and "stop" in times:
            return max(0.0, times["stop"] - times["start"])
    return now - coord.run_started


def progress(coord: Any, now: float) -> list[tuple[str, float, str]]:
    """(label, fraction done, detail) per stop condition of the run; [] when it is open-ended.

    While the run goes on, an acquisition node whose source ended or that is lost counts as
    done (the run does not wait for it); once it stopped, the bar shows what was produced."""
    out = []
    run = coord.topo.run
    acqs = [n for n in coord.nodes.values() if n.role == "acquisition"]
    limits = [coord.topo.frames_limit(n.name) for n in acqs]     # a one-shot capture: its burst
    if acqs and all(limits):
        produced, fracs = 0, []
        for n, limit in zip(acqs, limits):
            c = n.counters
            p = max(c.get("produced", 0), c.get("frames", 0) + (c.get("overflow", 0) or 0))
            produced += p
            done = (n.source_done or n.lost) and not coord.stop_reason
            fracs.append(1.0 if done else min(p / limit, 1.0))
        out.append(("frames", sum(fracs) / len(fracs), f"{produced:,} / {sum(limits):,} produced"))
    if run.duration:
        elapsed = elapsed_s(coord, now)
        out.append(("time", min(elapsed / run.duration, 1.0), f"{elapsed:,.0f} / {run.duration:,g} s"))
    return out


def _hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def _mb(nbytes: int | None) -> str:
    return "" if nbytes is None else f"{nbytes / 1e6:,.0f} MB"


class LogTail:
    """The last lines of a growing file, read from its end only when it changed."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._lines: list[str] = []

    def lines(self, path: Any, n: int = LOG_LINES) -> list[str]:
        try:
            st = os.stat(path)
        except (OSError, TypeError):
            return []
        key = (str(path), st.st_size, st.st_mtime_ns)
        if key != self._key:
            self._lines = last_lines(path, LOG_LINES, tail_bytes=LOG_TAIL_BYTES)
            self._key = key
        return self._lines[-n:] if n > 0 else []


# ------------------------------------------------------------------ the live view
def _cells(f: dict, n: Any) -> dict[str, Text]:
    state = f["state"]
    if f["fill"] is not None and f["slots"]:
        frac = f["fill"] / f["slots"]
        k = min(RING_BAR, round(frac * RING_BAR))
        color = "red" if frac >= 0.9 else "yellow" if frac >= 0.5 else "green"
        ring = Text.assemble(("━" * k, color), ("━" * (RING_BAR - k), "grey30"), f" {f['fill']}/{f['slots']}")
    else:
        ring = Text("")
    if f["losses"]:
        losses = Text(" ".join(f"{k} {v:,}" for k, v in f["losses"].items()), style="yellow")
    else:
        losses = Text("0", style="dim")
    return {
        "node": Text(n.name, style="bold"),
        "role": Text("acq" if n.role == "acquisition" else "proc"),
        "host": Text(n.host),
        "state": Text(state, style=STATE_STYLE.get(state, "")),
        "frames": Text(f"{f['frames']:,}"),
        "fps": Text(f"{f['fps']:,.0f}"),
        "mbps": Text(f"{f['mbps']:,.1f}"),
        "ring": ring,
        "credits": Text("" if f["credits"] is None else str(f["credits"]),
                        style="yellow" if f["credits"] == 0 and state == "running" else ""),
        "dead": Text("" if f["dead"] is None else f"{f['dead']:.1f} s"),
        "losses": losses,
        "cpu": Text("" if f["cpu"] is None else f"{f['cpu']:.0f}"),
        "mem": Text(_mb(f["rss"])),
    }


GAP = "  "             # between columns of the node table


def fit_columns(widths: dict[str, int], width: int) -> list[str]:
    """The columns (keys, in display order) that fit `width`, dropping by rank."""
    keep = [key for key, *_ in COLUMNS]
    for key, _h, _r, rank in sorted((c for c in COLUMNS if c[3]), key=lambda c: c[3]):
        if sum(widths[k] for k in keep) + len(GAP) * (len(keep) - 1) <= width:
            break
        keep.remove(key)
    return keep


def node_table(coord: Any, width: int) -> Text:
    """The node table as padded lines of text: header, rule, a row per node.  (Laid out here,
    not by rich's Table, whose measuring of every cell costs several ms per redraw.)"""
    rows = [_cells(node_figures(n), n) for n in coord.nodes.values()]
    widths = {key: max([len(header)] + [r[key].cell_len for r in rows]) for key, header, *_ in COLUMNS}
    keep = set(fit_columns(widths, width))
    shown = [(key, header, right, widths[key]) for key, header, right, _ in COLUMNS if key in keep]
    lines = [Text(GAP.join(header.rjust(w) if right else header.ljust(w) for _k, header, right, w in shown),
                  style="bold")]
    lines.append(Text("─" * len(lines[0]), style="dim"))
    for r in rows:
        line = Text()
        for i, (key, _h, right, w) in enumerate(shown):
            cell, pad = r[key], " " * (w - r[key].cell_len)
            if i:
                line.append(GAP)
            if right:
                line.append(pad)
            line.append_text(cell)
            if not right and i < len(shown) - 1:
                line.append(pad)
        lines.append(line)
    out = Text("\n").join(lines)
    out.no_wrap, out.overflow = True, "crop"
    return out


def _bar(frac: float, width: int) -> Text:
    k = round(frac * width)
    return Text.assemble(("━" * k, "green" if frac >= 1.0 else "magenta"), ("━" * (width - k), "grey30"))


def render(coord: Any, width: int, height: int, tail: LogTail | None = None,
           now: float | None = None, hint: str = "") -> Group:
    """The whole live view for a terminal of `width` x `height`; `hint`: the keys line."""
    now = time.monotonic() if now is None else now
    elapsed = elapsed_s(coord, now)
    state = coord.sm.state
    header = Text.assemble(
        (f"{coord.topo.name} run {coord.rundir.number}", "bold"), "  ",
        (state, STATE_STYLE.get(state, "bold")),
        (f" ({coord.stop_reason})" if coord.stop_reason else "", "yellow"),
        f"   elapsed {_hms(elapsed)}   saved {frames_saved(coord):,} frames")
    parts: list[Any] = [header]
    bars = progress(coord, now)
    bar_w = max(10, min(40, width - 45))
    for label, frac, detail in bars:
        parts.append(Text.assemble(f"{label:<7}", _bar(frac, bar_w), (f" {frac * 100:3.0f}%", "bold"),
                                   (f"  {detail}" if width >= 70 else "", "dim"), no_wrap=True, overflow="crop"))
    if not bars:
        parts.append(Text("open-ended run: it ends on Ctrl-C (or when every source has ended)", style="dim",
                          no_wrap=True, overflow="ellipsis"))
    parts.append(node_table(coord, width))
    if hint:
        parts.append(Text(hint, style="bold yellow" if "again" in hint else "dim", no_wrap=True, overflow="ellipsis"))
    used = (-(-header.cell_len // max(width, 1)) + max(len(bars), 1) + len(coord.nodes) + 2
            + bool(hint) + 1)      # the header may wrap; + the line Live keeps for the cursor
    room = min(LOG_LINES, height - used - 1)
    lines = (tail or LogTail()).lines(coord.rundir.log_path, room) if room > 0 else []
    for ln in lines:
        style = "red" if " ERROR " in ln or " CRITICAL " in ln else "yellow" if " WARNING " in ln else "dim"
        parts.append(Text(ln, style=style, no_wrap=True, overflow="ellipsis"))
    return Group(*parts)


class LiveDisplay:
    """Refreshed from the coordinator's loop (no thread of its own touches run state).

    With a `Keyboard`, the keys typed since the last redraw become coordinator events
    (`coord.events`), handled by the loop's next turn."""

    def __init__(self, console: Console | None = None, clock: Callable[[], float] = time.monotonic,
                 keyboard: Any = None) -> None:
        self.console = console or Console(stderr=True)
        self.clock = clock
        self.keyboard = keyboard
        self.live: Live | None = None
        self.tail = LogTail()
        self._last = -REFRESH
        self._coord: Any = None
        self._ended: Any = None

    def update(self, coord: Any, force: bool = False) -> None:
        now = self.clock()
        if not force and now - self._last < REFRESH:
            return
        self._last = now
        if coord.sm.state in ("idle", "configured") or coord.run_no == self._ended:
            return   # nothing to show until frames flow (a system between runs: until the next one)
        self._coord = coord
        keys = self.keyboard is not None and coord.sm.state in ("running", "paused")
        if keys:
            coord.events.extend(self.keyboard.events())     # typed before the start: taken now
        width, height = self.console.size
        hint = self.keyboard.hint if keys else ""
        body = render(coord, width, height, self.tail, now, hint)
        if self.live is None:
            self.live = Live(body, console=self.console, auto_refresh=False, transient=False)
            self.live.start(refresh=True)
        else:
            self.live.update(body, refresh=True)

    def run_ended(self, coord: Any) -> None:
        """The run's last frame stays on the screen; a system's next run gets a view of its own."""
        if self.live is not None:
            if self._coord is not None:
                self.update(self._coord, force=True)     # the final counters
            self.live.stop()
            self.live = None
        self._coord, self._ended = None, coord.run_no

    def close(self) -> None:
        if self.keyboard is not None:
            self.keyboard.close()
        if self._coord is not None:
            self.run_ended(self._coord)


# ------------------------------------------------------------------ plain lines
def plain_line(n: Any, stamp: str) -> str:
    f = node_figures(n)
    ring = "-" if f["slots"] is None else f"{f['fill']}/{f['slots']}"
    lost = ",".join(f"{k}:{v}" for k, v in f["losses"].items()) or "0"
    return (f"{stamp} {n.name} {f['state']} frames={f['frames']} fps={f['fps']:.0f} "
            f"MB/s={f['mbps']:.1f} ring={ring} credits={'-' if f['credits'] is None else f['credits']} "
            f"dead={'-' if f['dead'] is None else format(f['dead'], '.1f') + 's'} lost={lost} "
            f"cpu={'-' if f['cpu'] is None else format(f['cpu'], '.0f') + '%'} "
            f"rss={'-' if f['rss'] is None else format(f['rss'] / 1e6, '.0f') + 'MB'}")


class PlainLines:
    """When the console is not a terminal: one line per node every `period` s, and a last set
    with the final counters at `close()`."""

    def __init__(self, console: Console | None = None, period: float = PLAIN_PERIOD,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.console = console or Console(stderr=True)
        self.period = period
        self.clock = clock
        self._next = float("-inf")
        self._coord: Any = None
        self._ended: Any = None

    def update(self, coord: Any) -> None:
        now = self.clock()
        if now < self._next or coord.sm.state in ("idle", "configured") or coord.run_no == self._ended:
            return
        self._next = now + self.period
        self._coord = coord
        self._emit(coord)

    def _emit(self, coord: Any) -> None:
        stamp = time.strftime("%H:%M:%S")
        out = self.console.file
        out.write("".join(plain_line(n, stamp) + "\n" for n in coord.nodes.values()))
        out.flush()

    def run_ended(self, coord: Any) -> None:
        """The final counters of the run (a system's next run starts its lines afresh)."""
        if self._coord is not None:
            self._emit(self._coord)
        self._coord, self._ended, self._next = None, coord.run_no, float("-inf")

    def close(self) -> None:
        if self._coord is not None:
            self.run_ended(self._coord)


# ------------------------------------------------------------------ end of run
def summary_table(summary: dict) -> Group:
    b = summary["books"]
    t = Table(title=f"{summary['name']} run {summary['run']}: {summary['result']}"
                    f" ({summary.get('stop_reason') or 'see message'})", min_width=60)
    t.add_column("")
    t.add_column("frames", justify="right")
    t.add_row("produced", f"{b['produced']:,}")
    t.add_row("saved", f"{b['saved']:,}")
    for cause, n in b["missing_by_cause"].items():
        if n:
            t.add_row(f"missing: {cause}", f"{n:,}", style="yellow")
    t.add_row("balanced", "yes" if b["balanced"] else "NO", style=None if b["balanced"] else "bold red")
    lines = [t, Text(f"run directory: {summary['run_dir']}  ({summary['duration_s']:.1f} s)")]
    if summary.get("message"):
        lines.append(Text(summary["message"], style="bold red"))
    return Group(*lines)


def batch_table(rows: list[dict], title: str) -> Table:
    """The end of a batch: one row per run, what it changed, how it ended, its trigger rate."""
    t = Table(title=f"batch {title}: {sum(r['result'] == 'completed' for r in rows)} of {len(rows)} runs completed")
    for name, justify in (("run", "right"), ("name", "left"), ("changes", "left"), ("result", "left"),
                          ("stopped by", "left"), ("saved", "right"), ("missing", "right"),
                          ("live s", "right"), ("rate /s", "right")):
        t.add_column(name, justify=justify)
    for r in rows:
        changes = ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in (r.get("overrides") or {}).items())
        style = None if r["result"] == "completed" else "yellow" if r["result"] in ("degraded", "interrupted") \
            else "bold red"
        t.add_row(str(r.get("run") or "-"), f"{r['name']} #{r['repeat']}" + (" (before)" if r.get("skipped") else ""),
                  changes or "-", r["result"] or "-", r.get("stop_reason") or "-", f"{r.get('saved', 0):,}",
                  f"{r.get('missing', 0):,}", f"{r.get('live_s') or 0:.1f}",
                  "-" if r.get("rate_hz") is None else f"{r['rate_hz']:.1f}", style=style)
    return t
