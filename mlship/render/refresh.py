"""``mlship init --refresh``: the model facts init recorded in mlship.yaml (model.sha256,
model.size_bytes, model.profile.shapes) brought up to date with the model file as it is now,
and nothing else touched.

It is an edit of the text, not a rewrite of the document: the file is composed with PyYAML,
which knows where each value starts and ends, and only those value spans are replaced, so every
comment, key order, quoting style and the user's other edits stay byte for byte. A fact init
recorded but the user removed is added back under ``model:`` at the indentation of its keys.
Profile shapes the user set are kept while they still fit the model; only shapes that no longer
fit are replaced by the ones the model runs at (``mlship.model.probe``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mlship.errors import ConfigError

if TYPE_CHECKING:
    from pathlib import Path

    import yaml


@dataclass(frozen=True)
class Refreshed:
    text: str
    changed: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> {from, to}


def refresh_text(text: str, label: str | Path, facts: dict[str, Any]) -> Refreshed:
    """``text`` with ``model.<key>`` set to each of ``facts`` (``sha256``, ``size_bytes``,
    ``profile.shapes``); unchanged values are left as written."""
    import yaml

    root = yaml.compose(text)
    model = _value(root, "model") if isinstance(root, yaml.MappingNode) else None
    if not isinstance(model, yaml.MappingNode) or model.flow_style:
        raise ConfigError(f"{label}: model: is not a block mapping, so its recorded facts "
                          "cannot be edited in place",
                          hint="write model: as one key per line (as mlship init does)")
    edits: list[tuple[int, int, str]] = []  # (start, end, replacement) in the text
    inserts: list[str] = []
    changed: dict[str, dict[str, Any]] = {}
    for key, wanted in facts.items():
        node: Any = model
        for part in key.split(".")[:-1]:
            node = _value(node, part) if isinstance(node, yaml.MappingNode) else None
        leaf = key.split(".")[-1]
        current = _value(node, leaf) if isinstance(node, yaml.MappingNode) else None
        if current is None:
            if "." in key:
                continue  # a section the user removed stays removed
            inserts.append(f"{leaf}: {_scalar(wanted)}")
            changed[key] = {"from": None, "to": wanted}
            continue
        was = yaml.safe_load(text[current.start_mark.index:current.end_mark.index] or "null")
        if was == wanted:
            continue
        if not isinstance(current, yaml.ScalarNode) and not current.flow_style:
            # A block collection's span ends inside the next key's line: not safely replaced.
            raise ConfigError(f"{label}: model.{key} is written in block style; mlship init "
                              f"--refresh would set it to {_scalar(wanted)}",
                              hint=f"write model.{key} on one line (flow style, as mlship "
                                   "init does), or set it by hand")
        changed[key] = {"from": was, "to": wanted}
        edits.append((current.start_mark.index, current.end_mark.index, _scalar(wanted)))
    for start, end, replacement in sorted(edits, reverse=True):
        text = text[:start] + replacement + text[end:]
    if inserts:
        text = _insert(text, model, inserts)
    return Refreshed(text, changed)


def _value(mapping: yaml.MappingNode, key: str) -> Any:
    return next((value for name, value in mapping.value if name.value == key), None)


def _scalar(value: Any) -> str:
    """YAML flow text for a fact: JSON is YAML (a quoted string, a number, a flow map)."""
    return json.dumps(value)


def _insert(text: str, model: yaml.MappingNode, lines: list[str]) -> str:
    """New keys on lines of their own at the indentation of model:'s keys: after the first
    key's line when its value is one line (init's layout: ``source``), else before it."""
    import yaml

    first_key, first_value = model.value[0]
    indent = " " * first_key.start_mark.column
    if isinstance(first_value, yaml.ScalarNode) and \
            first_value.start_mark.line == first_value.end_mark.line:
        end = text.find("\n", first_value.end_mark.index)
        end = len(text) if end < 0 else end + 1
    else:
        end = text.rfind("\n", 0, first_key.start_mark.index) + 1
    block = "".join(f"{indent}{line}\n" for line in lines)
    return text[:end] + block + text[end:]
