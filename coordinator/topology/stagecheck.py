"""Cross-checks of processing pipelines against the rest of the topology.

Run once at validation, after the schema pass: the channels a stage names exist in
the node's streams, the tables and columns it reads are made by an earlier stage,
a forward/copy stage sends to another processing node without making a cycle,
a pipeline ends somewhere (save, forward or drain), and a user stage's file
imports and its function takes (batch, params).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from coordinator.topology.checks import INVALID, Record, _Context, _did_you_mean, _join
from coordinator.topology.model import chain_order
from coordinator.topology.stageschema import PHA_COLUMNS, PHA_PROPERTY_COLUMNS
from coordinator.topology.userstage import UserStageError, load_user_stage
from coordinator.topology.yamlpos import Index

#: Groups of /entry in a node's file or the run's master file run.h5 that a histogram
#: (/entry/<name>) must not take.
RESERVED_GROUPS = ("reduced", "configuration", "nodes", "missing")

#: Stages after which nothing reaches the rest of the pipeline.
TERMINAL = ("forward", "drain")
#: Stages that put events in the output (or hand them on): a pipeline needs one.
DISPOSING = ("save", "forward", "drain")
#: Columns of the events table every batch has.
EVENT_COLUMNS = ("seq", "timestamp", "flags", "present")


def _pipeline(node: Any) -> list[Record]:
    stages = node.get("pipeline") if isinstance(node, Record) else None
    return [st for st in stages if isinstance(st, Record)] if isinstance(stages, list) else []


def forward_targets(ctx: _Context, proc: dict[str, Record]) -> dict[str, list[str]]:
    """target -> processing nodes that forward or copy to it; reports bad targets and cycles."""
    targets: dict[str, list[str]] = {}
    for name, node in proc.items():
        for i, st in enumerate(node.get("pipeline") or []):
            if not isinstance(st, Record) or st.get("stage") not in ("forward", "copy") or not st.ok("to"):
                continue
            to, path = st["to"], ("processing", name, "pipeline", Index(i), "to")
            if to == name:
                ctx.report(path, f"a processing node cannot {st['stage']} to itself")
            elif to not in proc:
                ctx.report(path, f"{to!r} is not a processing node{_did_you_mean(to, list(proc))}; "
                                 f"processing nodes: {_join(proc)}")
            elif name not in targets.setdefault(to, []):
                targets[to].append(name)
    for start in targets:
        seen, todo = set(), [start]
        while todo:
            node = todo.pop()
            for nxt in (t for t, srcs in targets.items() if node in srcs):
                if nxt == start:
                    ctx.report(("processing", start), f"forward/copy stages make a cycle through {start!r}")
                    return {}
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
    return targets


class _Channels:
    """The channels one processing node can name: CH (every module) or module.CH."""

    def __init__(self, streams: dict, node: Record) -> None:
        self.bare: set[str] = set()
        self.qualified: set[str] = set()
        for s in node.get("streams") or []:
            spec = streams.get(s)
            if not isinstance(spec, Record) or not spec.ok("channels"):
                continue
            modules = spec.get("modules") or []
            if node.get("modules"):
                modules = [m for m in modules if m in node["modules"]]
            self.bare.update(spec["channels"])
            self.qualified.update(f"{m}.{c}" for m in modules for c in spec["channels"])

    def check(self, ctx: _Context, path: tuple, refs: Any) -> None:
        for i, ref in enumerate(refs if isinstance(refs, (list, tuple)) else [refs]):
            if ref is INVALID or ref in self.bare or ref in self.qualified:
                continue
            known = sorted(self.bare) + sorted(self.qualified)
            where = path + (Index(i),) if isinstance(refs, (list, tuple)) else path
            ctx.report(where, f"channel {ref!r} is not received here{_did_you_mean(ref, known)}; "
                              f"channels: {_join(known)}")


def _pha_columns(st: Record) -> set[str]:
    cols = set(PHA_COLUMNS)
    for param, extra in PHA_PROPERTY_COLUMNS.items():
        if st.get(param) is not None:
            cols.update(extra)
    return cols


def check_pipelines(ctx: _Context, top: Record, base_dir: Path) -> None:
    streams = top.get("streams") if isinstance(top.get("streams"), dict) else {}
    proc = top.get("processing") if isinstance(top.get("processing"), dict) else {}
    incoming: dict[str, dict[str, set[str] | None]] = {}     # chain target -> tables sent to it
    senders = {n: [s for s, node in proc.items() for st in _pipeline(node)
                   if st.get("stage") in ("forward", "copy") and st.get("to") == n] for n in proc}
    for name in chain_order(proc, senders):
        node = proc[name]
        if isinstance(node, Record):
            _check_pipeline(ctx, name, node, _Channels(streams, node), base_dir, incoming)


def _check_pipeline(ctx: _Context, name: str, node: Record, channels: _Channels, base_dir: Path,
                    incoming: dict[str, dict[str, set[str] | None]]) -> None:
    tables: dict[str, set[str] | None] = dict(incoming.get(name, {}))   # table -> columns (None: a user's)
    user_before = False
    formats: dict[str, int] = {}
    histograms: dict[str, int] = {}
    ended_by: str | None = None
    stages = node.get("pipeline") if isinstance(node.get("pipeline"), list) else []
    for i, st in enumerate(stages):
        if not isinstance(st, Record):
            continue
        path = ("processing", name, "pipeline", Index(i))
        kind = st.get("stage")
        if ended_by is not None:
            ctx.report(path + ("stage",), f"stage {kind!r} never runs: an earlier {ended_by!r} stage "
                                          f"passes nothing on")
            continue

        def table_columns(key: tuple, table: str) -> set[str] | None:
            if table in tables:
                return tables[table]
            if table == "events":
                return set(EVENT_COLUMNS)
            if not user_before:
                made = _join(tables) if tables else "none (a pha stage makes one)"
                ctx.report(path + key, f"table {table!r} is not made by an earlier stage; tables: {made}")
            return None

        def check_where(key: tuple, cols: set[str] | None, where: dict) -> None:
            for col in where if cols is not None else ():
                if col not in cols:
                    ctx.report(path + key + (col,), f"column {col!r} is not in the table"
                                                    f"{_did_you_mean(col, sorted(cols))}; columns: {_join(sorted(cols))}")

        if kind == "pha":
            channels.check(ctx, path + ("channel",), st.get("channel", []))
            if st.get("name") in tables:
                ctx.report(path + ("name",), f"table {st['name']!r} is made twice; give this pha stage "
                                             f"another name")
            tables[st.get("name", "pulses")] = _pha_columns(st)
        elif kind == "filter":
            for cond in ("pulses", "coincidence"):
                spec = st.get(cond)
                if not isinstance(spec, Record):
                    continue
                cols = table_columns((cond, "table"), spec.get("table", "pulses"))
                check_where((cond, "where"), cols, spec.get("where") or {})
                refs = spec.get("channel") if cond == "pulses" else spec.get("channels")
                if refs:
                    channels.check(ctx, path + (cond, "channel" if cond == "pulses" else "channels"), refs)
        elif kind == "histogram":
            cols = table_columns(("table",), st.get("table", "pulses"))
            field = st.get("field")
            if cols is not None and field not in cols:
                ctx.report(path + ("field",), f"column {field!r} is not in table {st.get('table', 'pulses')!r}"
                                              f"{_did_you_mean(field, sorted(cols))}; columns: {_join(sorted(cols))}")
            if st.get("channel"):
                channels.check(ctx, path + ("channel",), st["channel"])
            hname = st.get("name") or field
            taken = RESERVED_GROUPS + tuple(node.get("streams") or ())
            if hname in taken:
                ctx.report(path + ("name" if st.get("name") else "field",),
                           f"a histogram named {hname!r} would take the place of the group /entry/{hname} "
                           f"of the node file or run.h5 ({_join(taken)} are taken); give it another name")
            elif hname in histograms:
                ctx.report(path + ("name",), f"histogram {hname!r} is made twice (stage {histograms[hname]}); "
                                             f"give it a name")
            histograms[hname] = i
            st.setdefault("name", hname)
        elif kind == "save":
            fmt = st.get("format", "hdf5")
            if fmt in formats:
                ctx.report(path + ("format",), f"a second {fmt} save stage (the first is stage {formats[fmt]}); "
                                               f"one {fmt} file per node holds everything")
            formats[fmt] = i
            if "data" not in st:
                st["data"] = "reduced" if fmt == "csv" else "both"
            if st.get("mode") == "sparse":
                table_columns(("table",), st.get("table", "pulses"))
        elif kind == "user":
            _check_user(ctx, path, st, base_dir)
            user_before = True
            if st.get("name"):
                tables[st["name"]] = None
        elif kind in ("forward", "copy") and st.get("data", "both") != "raw" and isinstance(st.get("to"), str):
            incoming.setdefault(st["to"], {}).update(tables)
        if kind in TERMINAL:
            ended_by = kind
    if not any(isinstance(st, Record) and st.get("stage") in DISPOSING for st in stages):
        ctx.report(("processing", name, "pipeline"), "the pipeline keeps nothing: end it with save, forward "
                                                     "or drain (every event must be saved, sent on or dropped "
                                                     "on purpose)")


def _check_user(ctx: _Context, path: tuple, st: Record, base_dir: Path) -> None:
    if st.ok("file"):
        f = Path(st["file"]).expanduser()
        st["file"] = str(f if f.is_absolute() else (base_dir / f).resolve())
    if not (st.ok("file") and st.ok("function")) and not st.ok("entry_point"):
        return
    try:
        load_user_stage(st)
    except UserStageError as exc:
        ctx.report(path + (("file",) if "file" in st else ("entry_point",)), str(exc))
