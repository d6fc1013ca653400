"""The checking machinery of the topology loader: problems, leaf checks, mappings, variants.

Each check reports its own problems (file, line, dotted key path, what was expected)
into a `_Context` and returns the converted value or `INVALID`.  `load.py` builds the
topology schema from these pieces; `stageschema.py` builds the pipeline stages' schemas.
"""
from __future__ import annotations

import copy
import difflib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from coordinator.topology import yamlpos
from coordinator.topology.yamlpos import Index, KeyPath

# ---- problems ----------------------------------------------------------------------

@dataclass(frozen=True)
class Problem:
    """One thing wrong with a topology; `line` is 1-based, None when unknown."""

    file: str
    line: int | None
    key: str          # dotted key path, e.g. "acquisition.rp1.ring.slots"; "" for the whole file
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class TopologyError(Exception):
    """Raised with all problems of one file."""

    def __init__(self, problems: list[Problem]):
        super().__init__(problems)
        self.problems = list(problems)

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)


def format_path(path: KeyPath) -> str:
    """('a', 'b', Index(0), 'c') -> 'a.b[0].c'."""
    text = ""
    for part in path:
        text += f"[{int(part)}]" if isinstance(part, Index) else (f".{part}" if text else str(part))
    return text


class _Context:
    """Collects problems of one file and knows where each key path is in it."""

    def __init__(self, source: str, positions: dict[KeyPath, yamlpos.Mark] | None = None):
        self.source = source
        self.positions = positions or {}
        self.problems: list[Problem] = []

    def line(self, path: KeyPath) -> int | None:
        """Line of `path`, or of its nearest ancestor in the file (a missing or defaulted key)."""
        while True:
            mark = self.positions.get(path)
            if mark is not None:
                return mark.line
            if not path:
                return None
            path = path[:-1]

    def report(self, path: KeyPath, message: str) -> None:
        self.problems.append(Problem(self.source, self.line(path), format_path(path), message))

    def error(self) -> TopologyError:
        """All problems, in file order, without repeats (an alias can repeat one)."""
        unique = list(dict.fromkeys(self.problems))
        unique.sort(key=lambda p: (p.line is None, p.line or 0))
        return TopologyError(unique)


# ---- describing values -----------------------------------------------------------------

def describe(value: Any) -> str:
    """Plain words for a value in 'expected X, got Y'."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return repr(value) if value else "an empty string"
    if isinstance(value, dict):
        return "a mapping" if value else "an empty mapping"
    if isinstance(value, (list, tuple)):
        return "a list" if value else "an empty list"
    return f"a {type(value).__name__}"


def _did_you_mean(word: Any, choices: list[Any]) -> str:
    match = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _join(names: Any) -> str:
    return ", ".join(str(n) for n in names) or "(none)"


# ---- checks: each reports its own problems and returns the value, or INVALID ------------

class _Marker:
    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


INVALID: Any = _Marker("INVALID")         # what a check returns after reporting a problem
_NO_DEFAULT: Any = _Marker("NO_DEFAULT")


class Check(Protocol):
    want: str   # what a good value is, in words ("an integer >= 1")

    def __call__(self, ctx: _Context, value: Any, path: KeyPath) -> Any: ...


class Reject(Exception):
    """A leaf rejects a value: `message` replaces, `hint` extends 'expected X, got Y'."""

    def __init__(self, message: str | None = None, hint: str = ""):
        super().__init__(message)
        self.message = message
        self.hint = hint


@dataclass(frozen=True)
class Leaf:
    """A check of one plain value; `convert` returns it (converted) or raises Reject."""

    want: str
    convert: Callable[[Any], Any]

    def __call__(self, ctx: _Context, value: Any, path: KeyPath) -> Any:
        try:
            return self.convert(value)
        except Reject as exc:
            ctx.report(path, exc.message or f"expected {self.want}, got {describe(value)}{exc.hint}")
            return INVALID


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _looks_numeric(value: Any) -> bool:
    try:
        float(value)
        return isinstance(value, str)
    except (TypeError, ValueError):
        return False


def numeric(*, integer: bool, ge: float | None = None, le: float | None = None, gt: float | None = None,
            null: bool = False, words: dict[str, Any] | None = None) -> Leaf:
    """Integer or finite number within bounds; optionally null or a word standing for a value."""
    words = words or {}
    bounds = (f" {ge}..{le}" if ge is not None and le is not None else
              f" >= {ge}" if ge is not None else f" > {gt}" if gt is not None else
              f" <= {le}" if le is not None else "")
    want = ("an integer" if integer else "a number") + bounds
    want += "".join(f" or {w!r}" for w in words) + (" or null" if null else "")

    def convert(value: Any) -> Any:
        if value is None and null:
            return None
        if isinstance(value, str) and value in words:
            return words[value]
        if not (_is_int(value) if integer else _is_number(value)):
            raise Reject(hint=" (quoted: write it without quotes)" if _looks_numeric(value) else "")
        if (ge is not None and value < ge) or (le is not None and value > le) or \
                (gt is not None and value <= gt):
            raise Reject()
        return value if integer else float(value)

    return Leaf(want, convert)


def integer(ge: int | None = None, le: int | None = None, *, null: bool = False) -> Leaf:
    return numeric(integer=True, ge=ge, le=le, null=null)


def number(*, gt: float | None = None, ge: float | None = None, null: bool = False,
           words: dict[str, Any] | None = None) -> Leaf:
    return numeric(integer=False, gt=gt, ge=ge, null=null, words=words)


def boolean() -> Leaf:
    def convert(value: Any) -> Any:
        if isinstance(value, bool):
            return value
        raise Reject()

    return Leaf("true or false", convert)


def power_of_two(low: int, high: int) -> Leaf:
    want = f"a power of two {low}..{high}"

    def convert(value: Any) -> Any:
        if _is_int(value) and low <= value <= high and value & (value - 1) == 0:
            return value
        raise Reject()

    return Leaf(want, convert)


def among(*choices: int) -> Leaf:
    want = "one of " + ", ".join(map(str, choices))

    def convert(value: Any) -> Any:
        if _is_int(value) and value in choices:
            return value
        raise Reject()

    return Leaf(want, convert)


def one_of(*choices: str, null: bool = False) -> Leaf:
    """One of a few words (or null)."""
    want = "one of " + ", ".join(choices) + (" or null" if null else "")

    def convert(value: Any) -> Any:
        if (value is None and null) or (isinstance(value, str) and value in choices):
            return value
        raise Reject(hint=_did_you_mean(value, list(choices)) if isinstance(value, str) else "")

    return Leaf(want, convert)


def text(pattern: str | None = None, noun: str = "a non-empty string", *, null: bool = False) -> Leaf:
    """A non-empty string, optionally matching a regular expression (whole string), or null."""
    want = (f"{noun} matching {pattern}" if pattern else noun) + (" or null" if null else "")

    def convert(value: Any) -> Any:
        if value is None and null:
            return value
        if isinstance(value, str) and value and (pattern is None or re.fullmatch(pattern, value)):
            return value
        raise Reject()

    return Leaf(want, convert)



# ---- mappings, lists, named collections, tagged variants ------------------------------

class Record(dict):
    """The valid keys of one checked mapping, plus how to build its model object."""

    def __init__(self, build: Callable[[dict], Any]):
        super().__init__()
        self.build = build
        self.invalid: set[str] = set()   # keys present in the file but rejected

    def ok(self, key: str) -> bool:
        """Key present and valid."""
        return key in self and key not in self.invalid


@dataclass(frozen=True)
class Field:
    """One key of a mapping: its check, whether it is required, and an optional default.

    A `default` is a raw value, checked like input, used when the key is absent
    and the model's own default does not fit (stage parameters are filled in);
    without one, an absent key takes the model class's default.
    """

    check: Check
    required: bool = False
    default: Any = _NO_DEFAULT


@dataclass(frozen=True)
class Schema:
    """The keys of one mapping, the model object it builds, and an optional whole-record rule."""

    fields: dict[str, Field]
    build: Callable[[dict], Any]
    rule: Callable[[Record], list[tuple[str, str]]] | None = None   # -> [(key, message)]


def _check_fields(ctx: _Context, value: dict, path: KeyPath, schema: Schema,
                  fixed: dict[str, Any] | None = None) -> Record:
    """Check `value` (a dict) against `schema`; `fixed` keys were checked already (a variant's tag)."""
    record = Record(schema.build)
    record.update(fixed or {})
    allowed = [*record, *schema.fields]
    for key in value:
        if key not in allowed:
            hint = _did_you_mean(key, allowed) or f"; allowed here: {_join(allowed)}"
            ctx.report(path + (key,), f"unknown key {key!r}{hint}")
    before = len(ctx.problems)
    for key, spec in schema.fields.items():
        if key in value:
            result = spec.check(ctx, value[key], path + (key,))
        elif spec.required:
            ctx.report(path + (key,), f"required key is missing; expected {spec.check.want}")
            continue
        elif spec.default is not _NO_DEFAULT:
            result = spec.check(ctx, copy.deepcopy(spec.default), path + (key,))
        else:
            continue
        record[key] = result
        if result is INVALID:
            record.invalid.add(key)
    if schema.rule and len(ctx.problems) == before:
        for key, message in schema.rule(record):
            ctx.report(path + (key,), message)
    return record


def _not_a_mapping(ctx: _Context, value: Any, path: KeyPath) -> bool:
    if isinstance(value, dict):
        return False
    ctx.report(path, f"expected a mapping, got {describe(value)}")
    return True


@dataclass(frozen=True)
class Section:
    """A mapping with fixed keys."""

    schema: Schema
    want: str = "a mapping"

    def __call__(self, ctx: _Context, value: Any, path: KeyPath) -> Any:
        if _not_a_mapping(ctx, value, path):
            return INVALID
        return _check_fields(ctx, value, path, self.schema)


@dataclass(frozen=True)
class Named:
    """A mapping name -> entry (streams, nodes, hosts, channels); entries learn their name."""

    entry: Check
    name: Leaf
    want: str
    nonempty: bool = True

    def __call__(self, ctx: _Context, value: Any, path: KeyPath) -> Any:
        if _not_a_mapping(ctx, value, path):
            return INVALID
        if self.nonempty and not value:
            ctx.report(path, f"expected {self.want}, got an empty mapping")
        out: dict[Any, Any] = {}
        for key, item in value.items():
            self.name(ctx, key, path + (key,))   # a bad name is reported, its entry still checked
            entry = self.entry(ctx, item, path + (key,))
            if isinstance(entry, Record):
                entry["name"] = key
            out[key] = entry   # kept even if INVALID: the name exists for cross-checks
        return out


@dataclass(frozen=True)
class ListOf:
    """A list of items, each checked by `item`."""

    item: Check
    want: str
    nonempty: bool = True

    def __call__(self, ctx: _Context, value: Any, path: KeyPath) -> Any:
        if not isinstance(value, (list, tuple)) or (self.nonempty and not value):
            ctx.report(path, f"expected {self.want}, got {describe(value)}")
            return INVALID
        return [self.item(ctx, v, path + (Index(i),)) for i, v in enumerate(value)]


@dataclass(frozen=True)
class OneOrMany:
    """One mapping, or a non-empty list of them; always gives a list."""

    item: Check
    want: str

    def __call__(self, ctx: _Context, value: Any, path: KeyPath) -> Any:
        if isinstance(value, dict):
            return [self.item(ctx, value, path)]
        return ListOf(self.item, self.want)(ctx, value, path)


@dataclass(frozen=True)
class Variant:
    """A mapping whose `tag` key (kind, stage, distribution) selects its schema in `table`."""

    tag: str
    table: dict[str, Schema]
    noun: str            # "source kind", "stage", ...

    @property
    def want(self) -> str:
        return f"a mapping with {self.tag}: {' | '.join(self.table)}"

    def __call__(self, ctx: _Context, value: Any, path: KeyPath) -> Any:
        if _not_a_mapping(ctx, value, path):
            return INVALID
        known = list(self.table)
        tag_path = path + (self.tag,)
        if self.tag not in value:
            ctx.report(tag_path, f"required key is missing; expected one of {_join(known)}")
            return INVALID
        kind = value[self.tag]
        if not isinstance(kind, str):
            ctx.report(tag_path, f"expected one of {_join(known)}, got {describe(kind)}")
            return INVALID
        if kind not in self.table:
            ctx.report(tag_path, f"unknown {self.noun} {kind!r}{_did_you_mean(kind, known)}; "
                                 f"known {self.noun}s: {_join(known)}")
            return INVALID
        return _check_fields(ctx, value, path, self.table[kind], fixed={self.tag: kind})
