"""SCPI message syntax as the board's parser (scpi-parser, by Jan Breuer) accepts it.

* A header is nodes separated by ':' (a leading ':' is allowed); each node matches its
  pattern node case-insensitively in short form (the upper-case part of the documented
  mnemonic: TRig -> TR, STArt -> STA) or long form; `[...]` nodes are optional; a '#' in a
  pattern takes a numeric suffix (SOUR1), 1 when absent.  A query ends in '?'.
* Parameters follow the header after white space, separated by commas.
* Errors as the board reports them: the parser's own go to the standard queue (-1xx/-2xx
  codes); the Red Pitaya handlers log theirs to a second queue with code 9000 + the
  parser's code (so a bad value logged as "missing parameter", -109, reads 8891) or
  9500 + the library's error code for critical failures.  `Fail` carries both kinds.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

RP_ERR = 9000
RP_ERR_FATAL = 9500
RP_EOOR = 6                       # rp.h: "Value out of range."
MISSING, ILLEGAL, DATA_TYPE, SUFFIX = -109, -224, -104, -131
SCPI_TEXT = {
    -104: "Data type error", -108: "Parameter not allowed", -109: "Missing parameter",
    -113: "Undefined header", -131: "Invalid suffix", -224: "Illegal parameter value",
    -350: "Queue overflow",
}


class Fail(Exception):
    """A command failed; `entries` are (queue, code, message) with queue 'rp' or 'scpi'."""

    def __init__(self, *entries: tuple[str, int, str]) -> None:
        super().__init__(entries[-1][2] if entries else "failed")
        self.entries = list(entries)


def rp_error(header: str, text: str, parser_code: int | None = None) -> Fail:
    """A handler's logged error (8891 for a bad or missing value), after the parser's own."""
    entries = [("scpi", parser_code, SCPI_TEXT[parser_code])] if parser_code is not None else []
    entries.append(("rp", RP_ERR + MISSING, f"*{header} {text}"))
    return Fail(*entries)


def rp_critical(header: str, text: str, rp_code: int = RP_EOOR) -> Fail:
    """A library call refused the value (9500 + its error code)."""
    return Fail(("rp", RP_ERR_FATAL + rp_code, f"*{header} {text}"))


# ---- headers --------------------------------------------------------------------------
@dataclass(frozen=True)
class Node:
    short: str
    long: str
    numeric: bool
    optional: bool

    def match(self, text: str) -> tuple[bool, int | None]:
        word, num = text, None
        if self.numeric:
            m = re.fullmatch(r"(.*?)(\d*)", text)
            word, digits = m.group(1), m.group(2)
            num = int(digits) if digits else None
        word = word.upper()
        return word in (self.short, self.long), num


_TOKEN = re.compile(r"\[:?([^\]\[:]+)\]|:?([^\]\[:]+)")


@dataclass(frozen=True)
class Pattern:
    text: str
    nodes: tuple[Node, ...]
    query: bool

    @staticmethod
    def compile(text: str) -> "Pattern":
        query = text.endswith("?")
        body = text[:-1] if query else text
        nodes = []
        for m in _TOKEN.finditer(body):
            optional = m.group(1) is not None
            word = m.group(1) or m.group(2)
            numeric = word.endswith("#")
            word = word.rstrip("#")
            short = "".join(c for c in word if not c.islower())
            nodes.append(Node(short.upper(), word.upper(), numeric, optional))
        return Pattern(text, tuple(nodes), query)

    def match(self, header: str) -> list[int] | None:
        """Numeric suffixes (default 1) if `header` matches, else None."""
        query = header.endswith("?")
        if query != self.query:
            return None
        words = header[:-1] if query else header
        parts = words[1:].split(":") if words.startswith(":") else words.split(":")
        return _match(self.nodes, parts, [])


def _match(nodes: tuple[Node, ...], parts: list[str], nums: list[int]) -> list[int] | None:
    if not nodes:
        return nums if not parts else None
    node = nodes[0]
    if parts:
        ok, num = node.match(parts[0])
        if ok:
            got = _match(nodes[1:], parts[1:], nums + ([num or 1] if node.numeric else []))
            if got is not None:
                return got
    if node.optional:
        return _match(nodes[1:], parts, nums + ([1] if node.numeric else []))
    return None


# ---- messages and parameters -----------------------------------------------------------
@dataclass
class Call:
    """One command of a message: its header as typed, parameters, numeric suffixes."""

    header: str
    params: list[str]
    nums: list[int] = field(default_factory=list)
    used: int = 0

    def take(self) -> str | None:
        """The next parameter, or None if there is none left."""
        if self.used >= len(self.params):
            return None
        self.used += 1
        return self.params[self.used - 1]


def split_message(line: str) -> list[Call]:
    """Commands of one line (';' separated) with their parameters."""
    calls = []
    for part in line.split(";"):
        part = part.strip()
        if not part:
            continue
        header, _, rest = part.partition(" ")
        rest = rest.strip()
        params = [p.strip() for p in rest.split(",")] if rest else []
        calls.append(Call(header.strip(), params))
    return calls


def take_int(call: Call, what: str = "Missing first parameter.", minimum: int | None = 0) -> int:
    text = call.take()
    if text is None:
        raise rp_error(call.header, what, MISSING)
    try:
        value = int(text, 0) if text.lower().startswith(("0x", "0b")) else int(float(text))
    except ValueError:
        raise rp_error(call.header, what, DATA_TYPE) from None
    if minimum is not None and value < minimum:
        raise rp_error(call.header, what, ILLEGAL)
    return value


def take_choice(call: Call, choices: tuple[str, ...], what: str = "Missing first parameter.") -> str:
    text = call.take()
    if text is None:
        raise rp_error(call.header, what, MISSING)
    if text.upper() not in choices:
        raise rp_error(call.header, what, ILLEGAL)
    return text.upper()


def take_bool(call: Call) -> bool:
    text = call.take()
    if text is None:
        raise rp_error(call.header, "Missing first parameter.", MISSING)
    value = {"ON": True, "1": True, "OFF": False, "0": False}.get(text.upper())
    if value is None:
        raise rp_error(call.header, "Missing first parameter.", ILLEGAL)
    return value


_NUMBER = re.compile(r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*([A-Za-z]*)")
_VOLT_UNITS = {"": 1.0, "V": 1.0, "MV": 1e-3, "UV": 1e-6, "KV": 1e3}


def take_volts(call: Call) -> float:
    """A number in volts, with an optional V / mV / uV suffix as the board accepts."""
    text = call.take()
    if text is None:
        raise rp_error(call.header, "Missing first parameter.", MISSING)
    m = _NUMBER.fullmatch(text.strip())
    if m is None:
        raise rp_error(call.header, "Missing first parameter.", DATA_TYPE)
    scale = _VOLT_UNITS.get(m.group(2).upper())
    if scale is None:
        raise rp_error(call.header, "Missing first parameter.", SUFFIX)
    return float(m.group(1)) * scale


def format_float(value: float) -> str:
    """How the board prints a float result (C's %g)."""
    return "%g" % value
