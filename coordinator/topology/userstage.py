"""Loading a user stage: a function in a Python file, or a registered entry point.

Used twice with the same code: by `validate` (so a file that does not import or a
function with the wrong signature is reported before the run, with the topology's
file, line and key) and by the processing node that runs the stage.
"""
from __future__ import annotations

import hashlib
import importlib.util
import inspect
import sys
import traceback
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

#: Entry-point group under which packages register stages (`entry_point: NAME`).
ENTRY_POINT_GROUP = "daq_pulses.stages"


class UserStageError(Exception):
    """The stage cannot be loaded; the message says why in the user's terms."""


def _where(exc: BaseException, path: Path) -> str:
    """The user's file and line where an import failed (not our loader's frames)."""
    if isinstance(exc, SyntaxError) and exc.lineno:
        return f"{exc.filename}:{exc.lineno}"
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename) == path]
    return f"{path}:{frames[-1].lineno}" if frames else str(path)


def load_file_function(path: str | Path, function: str) -> Callable[..., Any]:
    """Import `path` (once per process) and return its callable `function`."""
    path = Path(path)
    if not path.is_file():
        raise UserStageError(f"file {path} not found")
    name = "daq_user_stage_" + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise UserStageError(f"{path} is not a Python file")
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except BaseException as exc:  # user code: anything may fly, even SystemExit
            raise UserStageError(f"{path} does not import: {type(exc).__name__}: {exc} "
                                 f"(at {_where(exc, path)})") from None
        sys.modules[name] = module
    fn = getattr(module, function, None)
    if fn is None:
        found = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                 and getattr(v, "__module__", None) == name]
        raise UserStageError(f"{path} has no function {function!r}"
                             + (f"; it defines {', '.join(found)}" if found else ""))
    return check_signature(fn, f"{function} in {path}")


def load_entry_point(name: str) -> Callable[..., Any]:
    found = entry_points(group=ENTRY_POINT_GROUP, name=name)
    if not found:
        known = sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
        raise UserStageError(f"no entry point {name!r} in group {ENTRY_POINT_GROUP}"
                             + (f"; registered: {', '.join(known)}" if known else " (none registered)"))
    ep = next(iter(found))
    try:
        fn = ep.load()
    except Exception as exc:
        raise UserStageError(f"entry point {name!r} ({ep.value}) does not load: "
                             f"{type(exc).__name__}: {exc}") from None
    return check_signature(fn, f"entry point {name!r} ({ep.value})")


def check_signature(fn: Any, what: str) -> Callable[..., Any]:
    """A stage is called as fn(batch, params): it must be callable with two arguments."""
    if not callable(fn):
        raise UserStageError(f"{what} is not callable")
    try:
        inspect.signature(fn).bind(None, None)
    except TypeError:
        raise UserStageError(f"{what} has signature {inspect.signature(fn)}; a stage is called "
                             f"as {getattr(fn, '__name__', 'stage')}(batch, params)") from None
    except ValueError:
        pass   # builtins without a signature: trust them
    return fn


def load_user_stage(params: dict) -> Callable[..., Any]:
    """The callable a `stage: user` entry (already validated) names."""
    if params.get("entry_point"):
        return load_entry_point(params["entry_point"])
    return load_file_function(params["file"], params["function"])
