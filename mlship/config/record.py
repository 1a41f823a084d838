"""Record measured facts in mlship.yaml the way init records model.sha256: one line, in place.

``mlship build --smoke`` measures each model's load and warm-up time in its image and writes
it as ``model.load_seconds`` (``models[N].load_seconds``), where render reads it to size the
startup probe. The file is edited as text, so comments, order and quoting survive: an
existing value is replaced where it stands, a new key goes on its own line after what init
recorded (``size_bytes``, ``sha256``; else the mapping's first one-line key), at that key's
indentation. A file it cannot edit safely (a flow
mapping such as ``model: {source: m.onnx}``) is left alone: ``record`` returns None and the
caller says what to add by hand. Every edit is checked by parsing the result: only the one
value may differ.
"""

from __future__ import annotations

from collections.abc import Sequence

import yaml

KeyPath = tuple[str | int, ...]
_NEIGHBOURS = ("size_bytes", "sha256", "version", "source")


def record(text: str, path: KeyPath, value: float) -> str | None:
    """``text`` with the scalar at ``path`` (mapping keys and sequence indexes) set to
    ``value``; None when the mapping that holds it is not a block mapping in the file."""
    try:
        root = yaml.compose(text)
        before = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    holder = _node_at(root, path[:-1])
    if not isinstance(holder, yaml.MappingNode) or holder.flow_style or not holder.value:
        return None
    rendered = _scalar(value)
    key = path[-1]
    for key_node, value_node in holder.value:
        if key_node.value == key:
            if not isinstance(value_node, yaml.ScalarNode):
                return None
            start, end = value_node.start_mark.index, value_node.end_mark.index
            edited = text[:start] + rendered + text[end:]
            break
    else:
        one_line = [(k, v) for k, v in holder.value if isinstance(v, yaml.ScalarNode)
                    and v.end_mark.line == k.start_mark.line]
        if not one_line:
            return None
        # Beside what init records (size_bytes, sha256) when they are there.
        anchor = next((pair for name in _NEIGHBOURS for pair in one_line
                       if pair[0].value == name), one_line[0])
        key_node, value_node = anchor
        line_end = text.find("\n", value_node.end_mark.index)
        if line_end < 0:
            text, line_end = text + "\n", len(text)
        line = f"{' ' * key_node.start_mark.column}{key}: {rendered}\n"
        edited = text[:line_end + 1] + line + text[line_end + 1:]
    return edited if _only_change(before, edited, path, value) else None


def dotted(path: Sequence[str | int]) -> str:
    """("models", 0, "load_seconds") -> models[0].load_seconds"""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f"{'.' if out else ''}{part}"
    return out


def _node_at(node: yaml.Node | None, path: KeyPath) -> yaml.Node | None:
    for part in path:
        if isinstance(part, int) and isinstance(node, yaml.SequenceNode):
            node = node.value[part] if part < len(node.value) else None
        elif isinstance(part, str) and isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if k.value == part), None)
        else:
            return None
    return node


def _scalar(value: float) -> str:
    return f"{value:.2f}"


def _only_change(before: object, text: str, path: KeyPath, value: float) -> bool:
    """The edit parses, and differs from ``before`` only in the one value."""
    try:
        after = yaml.safe_load(text)
    except yaml.YAMLError:
        return False
    holder: object = after
    for part in path[:-1]:
        holder = holder[part]  # type: ignore[index]
    if not isinstance(holder, dict) or holder.get(path[-1]) != float(_scalar(value)):
        return False
    previous = before
    for part in path[:-1]:
        previous = previous[part]  # type: ignore[index]
    if isinstance(previous, dict) and path[-1] in previous:
        holder[path[-1]] = previous[path[-1]]
    else:
        del holder[path[-1]]
    return bool(after == before)
