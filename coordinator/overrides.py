"""A run's changes to the topology, each addressed by its key path.

`acquisition.rp1.source.trigger.level: 0.1` sets that key in the resolved topology
(every default filled in, so every key a user may change is there); list items are
addressed by index (`processing.proc1.pipeline[1].threshold` or `...pipeline.1.threshold`).
The changed topology goes through the same checks as a topology file, so a value of the
wrong type is refused with the same message, named by the override's path and, for a
batch file, its line.
"""
from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from coordinator.topology import Problem, Topology, TopologyError, topology_from_dict

_PART = re.compile(r"[^.\[\]]+|\[\d+\]")


def parse_path(path: str) -> list[str | int]:
    """'a.b[1].c' or 'a.b.1.c' -> ['a', 'b', 1, 'c']."""
    if not isinstance(path, str) or not path or path.startswith(".") or ".." in path:
        raise ValueError(f"{path!r} is not a key path (like acquisition.rp1.source.trigger.level)")
    parts: list[str | int] = []
    for m in _PART.finditer(path):
        tok = m.group()
        parts.append(int(tok[1:-1]) if tok.startswith("[") else int(tok) if tok.isdigit() else tok)
    return parts


def normal_path(parts: list[str | int]) -> str:
    """The way problems name a key: a.b[1].c."""
    text = ""
    for p in parts:
        text += f"[{p}]" if isinstance(p, int) else (f".{p}" if text else p)
    return text


def _set(data: dict, parts: list[str | int], value: Any) -> None:
    node: Any = data
    for i, key in enumerate(parts):
        last = i == len(parts) - 1
        where = normal_path(parts[:i]) or "the top level"
        if isinstance(node, list):
            if not isinstance(key, int) or not 0 <= key < len(node):
                raise KeyError(f"{where} is a list of {len(node)}: no item {key!r}")
        elif isinstance(node, dict):
            if key not in node and not (last and "stage" in node):   # a stage's optional parameters
                known = ", ".join(sorted(map(str, node))) or "none"
                raise KeyError(f"no key {key!r} under {where} (known: {known})")
        else:
            raise KeyError(f"{where} is a value ({node!r}), it has no key {key!r}")
        if last:
            node[key] = value
        else:
            node = node[key]


def apply_overrides(topo: Topology, overrides: Mapping[str, Any], source: str = "overrides",
                    lines: Mapping[str, int] | None = None) -> Topology:
    """`topo` with `overrides` set and checked; TopologyError names each bad path (and line)."""
    if not overrides:
        return topo
    lines = lines or {}
    data = copy.deepcopy(topo.to_dict())
    problems: list[Problem] = []
    paths: dict[str, str] = {}
    for path, value in overrides.items():
        try:
            parts = parse_path(path)
            _set(data, parts, copy.deepcopy(value))
            paths[normal_path(parts)] = path
        except (KeyError, ValueError) as exc:
            message = exc.args[0] if exc.args else str(exc)
            problems.append(Problem(source, lines.get(path), str(path), f"unknown parameter: {message}"))
    if problems:
        raise TopologyError(problems)
    base = topo.path.parent if topo.path else None
    try:
        new = topology_from_dict(data, source=source, base_dir=base)
    except TopologyError as exc:
        out = []
        for p in exc.problems:
            given = next((paths[k] for k in sorted(paths, key=len, reverse=True)
                          if p.key == k or p.key.startswith(k + ".") or p.key.startswith(k + "[")), None)
            out.append(Problem(source, lines.get(given) if given else None, p.key,
                               p.message + (f" (set by {given})" if given and given != p.key else "")))
        raise TopologyError(out) from None
    return dataclasses.replace(new, path=topo.path)


def changed_paths(before: Mapping[str, Any], after: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Key paths whose values differ between two resolved topologies (for the record)."""
    out: list[str] = []
    if isinstance(before, Mapping) and isinstance(after, Mapping):
        for k in sorted(set(before) | set(after), key=str):
            sub = f"{prefix}.{k}" if prefix else str(k)
            if k not in before or k not in after:
                out.append(sub)
            else:
                out += changed_paths(before[k], after[k], sub)
        return out
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        for i, (a, b) in enumerate(zip(before, after)):
            out += changed_paths(a, b, f"{prefix}[{i}]")
        return out
    return [] if before == after else [prefix]
