"""Reading a YAML file mlship is given (mlship.yaml, a serve repository): bytes -> text -> data.

The file is untrusted input, so what PyYAML would accept silently or crash on is refused here
with the file and line: text that is not UTF-8 (a UTF-16 file, stray bytes), a key given twice
(PyYAML keeps the last), nesting deeper than any mlship.yaml needs (PyYAML recurses once per
level and dies with RecursionError), and aliases (``*name``: shared nodes that a few lines can
expand into billions of values for the validator to walk).
"""

from __future__ import annotations

import codecs
import re
from typing import TYPE_CHECKING, Any

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError
from yaml.reader import ReaderError

if TYPE_CHECKING:
    from pathlib import Path

_CONTROL = re.compile("[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
# mlship.yaml is at most about 6 levels deep; a repository document about 8.
MAX_DEPTH = 64
_WIDE_BOMS = {codecs.BOM_UTF32_LE: "UTF-32", codecs.BOM_UTF32_BE: "UTF-32",
              codecs.BOM_UTF16_LE: "UTF-16", codecs.BOM_UTF16_BE: "UTF-16"}


class SourceError(ValueError):
    """The file cannot be read as YAML; ``str()`` is the one line to print."""


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader refusing duplicate keys, aliases and deep nesting, each with its line."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise ComposerError(None, None, f"YAML aliases (*{event.anchor}) are not accepted; "
                                "write the value out", event.start_mark)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels",
                                    self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise ConstructorError(None, None, "merge keys (<<) are not accepted; write "
                                       "the keys out", key_node.start_mark)
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:
                continue  # an unhashable key: construct_mapping below says so
            if first is not None:
                raise ConstructorError(None, None, f"duplicate key {key!r} (first on line "
                                       f"{first})", key_node.start_mark)
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def decode(data: bytes, label: str) -> str:
    """UTF-8 text (a UTF-8 BOM is dropped); SourceError naming the line of a bad byte."""
    for bom, encoding in _WIDE_BOMS.items():
        if data.startswith(bom):
            raise SourceError(f"{label}: the file is {encoding} encoded; save it as UTF-8")
    if b"\x00\x00" in data[:64] or data[:2].count(b"\x00") == 1:
        raise SourceError(f"{label}: the file is UTF-16 or binary, not UTF-8 text; save it "
                          "as UTF-8")
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as err:
        before = data[:err.start].decode("utf-8", errors="replace")
        line = before.count("\n") + 1
        column = len(before) - (before.rfind("\n") + 1) + 1
        key = key_at(data.decode("utf-8", errors="replace"), len(before))
        where = f"{key}: " if key else ""
        raise SourceError(f"{label}: line {line}, column {column}: {where}not valid UTF-8 "
                          f"(byte 0x{data[err.start]:02x}); save the file as UTF-8") from None


def parse(text: str, label: str) -> Any:
    """The YAML document of ``text``; SourceError with its line for anything refused."""
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except ReaderError as err:  # a character YAML does not allow anywhere, raw in the file
        before = text[:err.position]
        line = before.count("\n") + 1
        column = len(before) - (before.rfind("\n") + 1) + 1
        key = key_at(_CONTROL.sub(" ", text), err.position)
        where = f"{key}: " if key else ""
        raise SourceError(f"{label}: line {line}, column {column}: {where}the file holds the "
                          f"control character U+{int(err.character):04X}; "
                          "remove it") from None
    except yaml.YAMLError as err:
        raise SourceError(syntax_message(label, err)) from None


def read(path: Path, label: str | None = None) -> tuple[str, Any]:
    """The text and the document of the YAML file ``path``."""
    name = label or str(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise SourceError(f"{name}: cannot read the file: {err.strerror or err}") from None
    text = decode(data, name)
    return text, parse(text, name)


def compose(text: str) -> yaml.Node | None:
    """The node tree of ``text`` (for line numbers), or None when it does not parse."""
    try:
        return yaml.compose(text, Loader=_StrictLoader)
    except yaml.YAMLError:
        return None


def syntax_message(label: str, err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    where = f" line {mark.line + 1}, column {mark.column + 1}:" if mark is not None else ""
    return f"{label}:{where} invalid YAML: {problem}"


def key_at(text: str, index: int) -> str | None:
    """The dotted key path of the value around character ``index`` of ``text``, if it parses."""
    node = compose(text)
    path: list[str] = []
    while node is not None:
        children: list[tuple[str, yaml.Node]] = []
        if isinstance(node, yaml.MappingNode):
            children = [(str(key.value), value) for key, value in node.value]
        elif isinstance(node, yaml.SequenceNode):
            children = [(str(position), value) for position, value in enumerate(node.value)]
        inside = [(name, child) for name, child in children
                  if child.start_mark.index <= index <= child.end_mark.index]
        if not inside:
            break
        name, node = inside[0]
        path.append(name)
    return ".".join(path) or None
