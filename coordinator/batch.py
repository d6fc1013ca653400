"""Batch files: a list of runs of one topology, each with its changes and stop condition.

    topology: loopback.yaml              # relative to this file
    on_failure: continue                 # or stop: what a failed run does to the rest
    defaults: {frames: 1000}             # stop condition of every run unless it has its own
    runs:
      - name: threshold
        repeat: 3
        set: {acquisition.rp1.source.trigger.level: 0.1}
        duration: 10                      # or frames: N, or until: {histogram: spectrum, entries: N}

The whole plan is checked before anything starts (every override applied to the topology
and checked like the topology file itself), with errors naming the plan's file and line.
Progress is kept next to the runs (`<run directory>/batch-<plan>.json`) after every run, so
running the same plan again after an interruption does only the runs not yet done.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from coordinator.topology import Problem, TopologyError
from coordinator.topology import yamlpos
from coordinator.topology.checks import format_path

PLAN_KEYS = {"topology", "on_failure", "defaults", "runs"}
RUN_KEYS = {"name", "set", "repeat", "frames", "duration", "until"}
STOP_KEYS = ("frames", "duration", "until")
DONE = ("completed", "degraded", "failed")     # an interrupted run is done again on resume


@dataclass
class PlannedRun:
    index: int                 # entry in the plan's list
    repeat: int                # 1.. within the entry
    name: str
    overrides: dict[str, Any]
    frames: int | None = None
    duration: float | None = None
    until: dict | None = None
    lines: dict[str, int] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """Names this run of the plan, with a digest of what it asks (an edited entry is new)."""
        what = json.dumps([self.name, self.overrides, self.frames, self.duration, self.until], sort_keys=True,
                          default=str)
        return f"{self.index}:{self.name}:{self.repeat}:{hashlib.sha1(what.encode()).hexdigest()[:10]}"


@dataclass
class Plan:
    path: Path
    topology: Path
    on_failure: str
    runs: list[PlannedRun]
    problems: list[Problem] = field(default_factory=list)     # reported with check_plan's

    @property
    def progress_name(self) -> str:
        return f"batch-{self.path.stem}.json"


def load_plan(path: str | Path) -> Plan:
    """Read a batch file; TopologyError (file:line: key: message) for every problem found."""
    path = Path(path).absolute()
    problems: list[Problem] = []
    try:
        doc = yamlpos.parse(path.read_text(encoding="utf-8-sig"))
    except OSError as exc:
        raise TopologyError([Problem(str(path), None, "", f"cannot read the file: {exc.strerror or exc}")]) from None
    except yamlpos.YamlSyntaxError as exc:
        raise TopologyError([Problem(str(path), exc.line, "", f"YAML syntax error: {exc.message}")]) from None

    def line(*key: Any) -> int | None:
        mark = doc.positions.get(tuple(key))
        return mark.line if mark else None

    def bad(key: tuple, message: str) -> None:
        problems.append(Problem(str(path), line(*key), format_path(key), message))

    data = doc.data
    if not isinstance(data, dict):
        raise TopologyError([Problem(str(path), None, "", "expected a mapping with topology and runs")])
    for k in sorted(set(data) - PLAN_KEYS, key=str):
        bad((k,), f"unknown key (known: {', '.join(sorted(PLAN_KEYS))})")
    topo = data.get("topology")
    if not isinstance(topo, str):
        bad(("topology",), "the topology file is required (a path, relative to this file)")
    on_failure = data.get("on_failure", "continue")
    if on_failure not in ("continue", "stop"):
        bad(("on_failure",), f"expected continue or stop, got {on_failure!r}")
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict) or set(defaults) - set(STOP_KEYS):
        bad(("defaults",), f"expected a mapping of {', '.join(STOP_KEYS)}")
        defaults = {}
    entries = data.get("runs")
    if not isinstance(entries, list) or not entries:
        bad(("runs",), "expected a list of runs")
        entries = []
    runs: list[PlannedRun] = []
    for i, entry in enumerate(entries):
        at = ("runs", yamlpos.Index(i))
        if not isinstance(entry, dict):
            bad(at, "expected a mapping (name, set, repeat, frames/duration/until)")
            continue
        for k in sorted(set(entry) - RUN_KEYS, key=str):
            bad((*at, k), f"unknown key (known: {', '.join(sorted(RUN_KEYS))})")
        name = entry.get("name", f"run{i + 1}")
        overrides = entry.get("set") or {}
        if not isinstance(overrides, dict):
            bad((*at, "set"), "expected a mapping of key path: value")
            overrides = {}
        repeat = entry.get("repeat", 1)
        if type(repeat) is not int or repeat < 1:
            bad((*at, "repeat"), f"expected a whole number >= 1, got {repeat!r}")
            repeat = 1
        stop = {**defaults, **{k: entry[k] for k in STOP_KEYS if k in entry}}
        _check_stop(stop, at, bad)
        lines = {k: line(*at, "set", k) for k in overrides}
        for r in range(1, repeat + 1):
            runs.append(PlannedRun(i, r, str(name), dict(overrides), stop.get("frames"), stop.get("duration"),
                                   stop.get("until"), lines))
    if not isinstance(topo, str) or not runs:
        raise TopologyError(problems)
    return Plan(path, (path.parent / topo).absolute(), on_failure, runs, problems)


def _check_stop(stop: dict, at: tuple, bad: Callable[[tuple, str], None]) -> None:
    frames, duration, until = stop.get("frames"), stop.get("duration"), stop.get("until")
    if frames is not None and (type(frames) is not int or frames < 0):
        bad((*at, "frames"), f"expected a whole number of frames (0: no limit), got {frames!r}")
    if duration is not None and (not isinstance(duration, (int, float)) or isinstance(duration, bool) or duration < 0):
        bad((*at, "duration"), f"expected seconds (0: no limit), got {duration!r}")
    if until is not None and not (isinstance(until, dict) and set(until) == {"histogram", "entries"}
                                  and isinstance(until["histogram"], str) and type(until["entries"]) is int):
        bad((*at, "until"), "expected {histogram: NAME, entries: N}")


def check_plan(plan: Plan, prepare: Callable[..., Any]) -> None:
    """Every run's topology, before any starts: the System's `prepare` with the plan's lines;
    raises TopologyError with these and the plan's own problems."""
    problems: list[Problem] = list(plan.problems)
    for run in plan.runs:
        if run.repeat > 1:
            continue
        try:
            topo = prepare(run.overrides, frames=run.frames, duration=run.duration, source=str(plan.path),
                           lines=run.lines)
        except TopologyError as exc:
            problems += exc.problems
            continue
        if run.until is not None:
            names = {s.params.get("name") or s.params.get("field") for p in topo.processing.values()
                     for s in p.pipeline if s.stage == "histogram"}
            if run.until["histogram"] not in names:
                problems.append(Problem(str(plan.path), None, f"runs[{run.index}].until",
                                        f"no histogram {run.until['histogram']!r} in the pipelines "
                                        f"(there are: {', '.join(sorted(map(str, names))) or 'none'})"))
    if problems:
        raise TopologyError(problems)


class Progress:
    """What runs of a plan are done, kept as JSON after every run (atomically)."""

    def __init__(self, path: Path, restart: bool = False) -> None:
        self.path = path
        self.done: dict[str, dict] = {}
        if path.exists() and not restart:
            try:
                self.done = json.loads(path.read_text()).get("runs", {})
            except (OSError, ValueError):
                self.done = {}

    def is_done(self, run: PlannedRun) -> bool:
        return self.done.get(run.key, {}).get("result") in DONE

    def record(self, run: PlannedRun, summary: dict) -> dict:
        row = row_of(run, summary)
        self.done[run.key] = row
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"runs": self.done}, indent=1, default=str))
        os.replace(tmp, self.path)
        return row


def row_of(run: PlannedRun, summary: dict) -> dict:
    """A batch table row: what was asked, how the run ended, what it saved, its trigger rate."""
    books = summary.get("books") or {}
    modules = books.get("modules") or {}
    live = summary.get("live_s") or 0.0
    produced = max((m.get("produced", 0) for m in modules.values()), default=0)
    return {"name": run.name, "repeat": run.repeat, "overrides": run.overrides, "run": summary.get("run"),
            "run_dir": summary.get("run_dir"), "result": summary.get("result"),
            "stop_reason": summary.get("stop_reason"), "message": summary.get("message", ""),
            "produced": produced, "saved": books.get("saved", 0), "missing": books.get("missing", 0),
            "live_s": live, "rate_hz": round(produced / live, 3) if live else None}


def execute(plan: Plan, system: Any, progress: Progress, say: Callable[[str], None]) -> tuple[list[dict], bool]:
    """Run the plan's runs not done yet, in order; returns (rows of every run, interrupted).

    A failed run is recorded and the batch goes on, or stops with `on_failure: stop`.  Ctrl-C
    stops the current run in order (recorded as interrupted, so it is done again on resume).
    """
    rows: list[dict] = []
    todo = [r for r in plan.runs if not progress.is_done(r)]
    for r in plan.runs:
        if progress.is_done(r):
            rows.append({**progress.done[r.key], "skipped": True})
    if len(todo) < len(plan.runs):
        say(f"resuming: {len(plan.runs) - len(todo)} of {len(plan.runs)} runs done before")
    for k, planned in enumerate(todo, 1):
        repeated = sum(p.index == planned.index for p in plan.runs) > 1
        label = planned.name + (f" #{planned.repeat}" if repeated else "")
        try:
            run = system.start(planned.overrides, frames=planned.frames, duration=planned.duration,
                               until=planned.until)
            say(f"[{k}/{len(todo)}] {label}: run {run.number} in {run.directory}")
            summary = run.wait()
        except KeyboardInterrupt:
            system.close(interrupted=True)
            current = system.current
            if current is not None and current.summary is not None:
                rows.append(progress.record(planned, current.summary))
            say("batch interrupted; run the same command again to resume it")
            return rows, True
        row = progress.record(planned, summary)
        rows.append(row)
        say(f"[{k}/{len(todo)}] {label}: {row['result']} ({row['stop_reason']}), {row['saved']} frames saved"
            + (f": {row['message']}" if row["result"] == "failed" else ""))
        if row["result"] == "failed" and plan.on_failure == "stop":
            say("on_failure: stop: the batch ends here")
            break
    return rows, False
