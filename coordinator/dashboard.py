"""Live terminal view of a run (rich), and the end-of-run summary table."""
from __future__ import annotations

import time
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

REFRESH = 0.25


def _node_table(coord: Any) -> Table:
    t = Table(title=f"{coord.topo.name} run {coord.rundir.number}: {coord.sm.state}"
                    f"{' (' + coord.stop_reason + ')' if coord.stop_reason else ''}",
              expand=False)
    for col in ("node", "role", "state", "frames", "frames/s", "MB/s", "ring fill", "credits",
                "drops", "rejected", "CPU %"):
        t.add_column(col, justify="right" if col not in ("node", "role", "state") else "left")
    for n in coord.nodes.values():
        c, r = n.counters, n.rates
        fill = f"{c['ring_fill']}/{c['ring_slots']}" if "ring_slots" in c else ""
        state = Text("lost", style="bold red") if n.lost else Text(n.state)
        t.add_row(n.name, n.role[:4], state, f"{c.get('frames', 0):,}",
                  f"{r.get('frames_per_s', 0):,.0f}", f"{r.get('MB_per_s', 0):,.1f}", fill,
                  str(c.get("credits", "")), str(c.get("overflow", "")), str(c.get("rejected", 0)),
                  f"{r.get('cpu_percent', 0):.0f}")
    return t


class LiveDisplay:
    """Refreshed from the coordinator's loop (no thread of its own touches run state)."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.live: Live | None = None
        self._last = 0.0

    def update(self, coord: Any) -> None:
        now = time.monotonic()
        if now - self._last < REFRESH:
            return
        self._last = now
        if coord.sm.state in ("idle", "configured"):
            return   # nothing to show until frames flow
        elapsed = now - coord.run_started if coord.run_started else 0.0
        body = Group(_node_table(coord), Text(f"elapsed {elapsed:6.1f} s   run dir {coord.rundir.path}"))
        if self.live is None:
            self.live = Live(body, console=self.console, auto_refresh=False, transient=False)
            self.live.start()
        else:
            self.live.update(body, refresh=True)

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None


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
