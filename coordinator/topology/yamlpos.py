"""YAML text -> plain Python values plus the source position of every key.

`yaml.safe_load` forgets where values came from and silently keeps the last of
two equal keys.  A topology error must name its line, and a duplicated key is
almost always a mistake, so we compose the node tree ourselves (SafeLoader, so
scalars get the usual YAML 1.1 types) and record for every key path the line
and column of the key (or of the list item).  This module knows nothing about
topologies: the loader turns what it returns into topology problems.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

#: A position in the value tree: mapping keys and list indices (`Index`) from the root.
KeyPath = tuple[Any, ...]


class Index(int):
    """A list index in a key path; tells `[0]` apart from a mapping key that is the integer 0."""

_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MERGE_TAG = "tag:yaml.org,2002:merge"


@dataclass(frozen=True)
class Mark:
    """1-based line and column."""

    line: int
    column: int


@dataclass(frozen=True)
class DuplicateKey:
    """A key given twice in one mapping; `mark` is the second occurrence."""

    path: KeyPath
    mark: Mark
    first: Mark


@dataclass
class Document:
    """Parsed YAML: `data` is None for an empty document."""

    data: Any
    positions: dict[KeyPath, Mark] = field(default_factory=dict)
    duplicates: list[DuplicateKey] = field(default_factory=list)


class YamlSyntaxError(Exception):
    """The text is not (supported) YAML; `line` is 1-based or None."""

    def __init__(self, message: str, line: int | None = None):
        super().__init__(message)
        self.message = message
        self.line = line


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads `1e9` and `2.5E-3` as numbers, as YAML 1.2 and every user does
    (YAML 1.1 wants a dot and a signed exponent, so PyYAML alone gives the string '1e9')."""


_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789"))


def parse(text: str) -> Document:
    """Parse one YAML document into plain values, key positions and duplicate keys."""
    loader = None
    try:
        loader = _Loader(text)
        root = loader.get_single_node()
        return Document(None) if root is None else _Walker(loader).document(root)
    except yaml.MarkedYAMLError as exc:
        line = _line(exc.problem_mark or exc.context_mark)
        raise YamlSyntaxError(_describe_yaml_error(exc), line) from None
    except yaml.reader.ReaderError as exc:   # a character YAML does not allow; has a position, no mark
        line = text.count("\n", 0, exc.position) + 1
        code = exc.character if isinstance(exc.character, int) else ord(exc.character)
        raise YamlSyntaxError(f"character U+{code:04X} is not allowed in YAML", line) from None
    finally:
        if loader is not None:
            loader.dispose()


def _mark(node: Node) -> Mark:
    return Mark(node.start_mark.line + 1, node.start_mark.column + 1)


def _line(mark: Any) -> int | None:
    return None if mark is None else mark.line + 1


def _describe_yaml_error(exc: yaml.MarkedYAMLError) -> str:
    """One line in PyYAML's own words: '<context> (line N), <problem>'."""
    problem = exc.problem or "invalid YAML"
    if not exc.context:
        return problem
    context = exc.context
    if exc.context_mark is not None and exc.problem_mark is not None \
            and exc.context_mark.line != exc.problem_mark.line:
        context += f" (line {exc.context_mark.line + 1})"
    return f"{context}, {problem}"


class _Walker:
    """Builds values from nodes, noting positions; one instance per document."""

    def __init__(self, loader: yaml.SafeLoader):
        self.loader = loader
        self.doc = Document(None)
        self.active: set[int] = set()   # ids of collection nodes being built (recursion guard)

    def document(self, root: Node) -> Document:
        self.doc.positions[()] = _mark(root)
        self.doc.data = self.value(root, ())
        return self.doc

    def value(self, node: Node, path: KeyPath) -> Any:
        if isinstance(node, ScalarNode):
            return self.scalar(node)
        if id(node) in self.active:
            raise YamlSyntaxError("recursive alias (a node that contains itself)", _mark(node).line)
        self.active.add(id(node))
        try:
            if isinstance(node, SequenceNode):
                self._require_tag(node, _SEQ_TAG)
                return [self.item(child, path + (Index(i),)) for i, child in enumerate(node.value)]
            self._require_tag(node, _MAP_TAG)
            return self.mapping(node, path)
        finally:
            self.active.discard(id(node))

    def item(self, node: Node, path: KeyPath) -> Any:
        self.doc.positions[path] = _mark(node)
        return self.value(node, path)

    def mapping(self, node: MappingNode, path: KeyPath) -> dict:
        """Own keys win over merged (`<<: *anchor`) ones; own duplicates are recorded."""
        own: dict[Any, Any] = {}
        first_seen: dict[Any, Mark] = {}
        last_seen: dict[Any, Mark] = {}
        merged: list[MappingNode] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                merged.extend(self._merge_sources(value_node))
                continue
            key = self.key(key_node)
            mark = _mark(key_node)
            if key in first_seen:
                self.doc.duplicates.append(DuplicateKey(path + (key,), mark, first_seen[key]))
            else:
                first_seen[key] = mark
            # The last value wins, in the first one's place (as PyYAML does).
            last_seen[key] = mark
            own[key] = self.value(value_node, path + (key,))
        result: dict[Any, Any] = {}
        for source in merged:
            for key, value in self.value(source, path).items():
                if key not in own and key not in result:
                    result[key] = value
        for key, mark in last_seen.items():   # after merging, which notes the anchor's positions
            self.doc.positions[path + (key,)] = mark
        result.update(own)
        return result

    def key(self, node: Node) -> Any:
        if not isinstance(node, ScalarNode):
            raise YamlSyntaxError("a mapping key must be a plain value, not a list or mapping",
                                  _mark(node).line)
        return self.scalar(node)

    def scalar(self, node: ScalarNode) -> Any:
        try:
            return self.loader.construct_object(node)
        except (ValueError, TypeError, OverflowError):   # e.g. `!!int x`: PyYAML lets int() fail
            raise YamlSyntaxError(f"cannot read {node.value!r} as {node.tag}", _mark(node).line) from None

    def _merge_sources(self, node: Node) -> list[MappingNode]:
        sources = node.value if isinstance(node, SequenceNode) else [node]
        if not all(isinstance(s, MappingNode) for s in sources):
            raise YamlSyntaxError("'<<' (merge) needs a mapping or a list of mappings", _mark(node).line)
        return sources

    @staticmethod
    def _require_tag(node: Node, tag: str) -> None:
        if node.tag != tag:
            raise YamlSyntaxError(f"unsupported YAML tag {node.tag!r}", _mark(node).line)
