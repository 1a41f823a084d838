"""The key reference of docs/configuration.md, generated from the config model itself.

A hand-kept list of keys drifts; this one cannot, and a test checks the doc holds it.
Run ``python -m mlship.config.docs`` to print the table, ``--write`` (from the checkout) to
update docs/configuration.md and docs/mlship.schema.json.
"""

from __future__ import annotations

import json
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

BEGIN = "<!-- BEGIN GENERATED KEY REFERENCE (python -m mlship.config.docs) -->"
END = "<!-- END GENERATED KEY REFERENCE -->"


def key_reference() -> str:
    from mlship.config.schema import MlshipConfig

    rows = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    rows += [_row(path, field, default) for path, field, default in _walk(MlshipConfig, "", None)]
    return "\n".join([BEGIN, *rows, END]) + "\n"


RUNTIME_BEGIN = ("<!-- BEGIN GENERATED RUNTIME SETTINGS (python -m mlship.config.docs "
                 "--write) -->")
RUNTIME_END = "<!-- END GENERATED RUNTIME SETTINGS -->"


def runtime_settings_table() -> str:
    """docs/runtime-api.md's settings table, from the runtime's own declaration."""
    from mlship_runtime.settings import DECLARED

    rows = ["| field | default | accepts | meaning |", "| --- | --- | --- | --- |"]
    for declared in DECLARED:
        default = declared.default
        shown = "unset" if default in (None, "") else f"`{str(default).lower()}`" \
            if isinstance(default, bool) else f"`{default:g}`" if isinstance(default, float) \
            else f"`{default}`"
        if declared.spec.pod is not declared.default and declared.pod_default != default:
            pod = declared.pod_default
            shown += f" (`{str(pod).lower() if isinstance(pod, bool) else pod}` in a rendered pod)"
        accepts = declared.spec.expected() if (declared.spec.choices or declared.spec.pattern
                                               or declared.kind in (int, float)) else \
            declared.kind.__name__
        doc = declared.spec.doc.replace("|", "\\|")
        rows.append(f"| `{declared.name}` | {shown} | {accepts} | {doc} |")
    return "\n".join([RUNTIME_BEGIN, *rows, RUNTIME_END]) + "\n"


def _walk(model: type[BaseModel], prefix: str,
          parent: BaseModel | None) -> list[tuple[str, Any, Any]]:
    """(key path, field, effective default); a section's default instance decides the
    defaults of its keys (probes.readiness.period_s is 5 there, 10 in the bare class)."""
    found: list[tuple[str, Any, Any]] = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        default = getattr(parent, name) if parent is not None else _default(field)
        nested = _section(field.annotation)
        if nested is not None and get_origin(field.annotation) is dict:
            found.append((path, field, default))
            found.extend(_walk(nested, f"{path}.NAME.", None))
        elif nested is not None and get_origin(field.annotation) is not list:
            instance = default if isinstance(default, BaseModel) else None
            found.extend(_walk(nested, f"{path}.", instance))
        elif nested is not None:
            found.append((path, field, default))
            found.extend(_walk(nested, f"{path}[].", None))
        else:
            found.append((path, field, default))
    return found


def _default(field: Any) -> Any:
    if field.default_factory is not None:
        return field.default_factory()
    return field.default


def _section(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def _row(path: str, field: Any, default: Any) -> str:
    if isinstance(default, list) and default and isinstance(default[0], BaseModel):
        default = [item.model_dump(exclude_none=True) for item in default]
    shown = "required" if default is PydanticUndefined else f"`{json.dumps(default)}`"
    meaning = (field.description or "").replace("|", "\\|")
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    enum = extra.get("enum")
    kind = " \\| ".join(f"`{value}`" for value in enum) if isinstance(enum, list) \
        else _type_name(field.annotation, field.metadata) + _bounds(field)
    return f"| `{path}` | {kind} | {shown} | {meaning} |"


def _bounds(field: Any) -> str:
    """` >= 1`, ` 0..1000`: the numeric bounds of a field, as its validators hold them."""
    low = next((f">= {m.ge}" for m in field.metadata if getattr(m, "ge", None) is not None),
               next((f"> {m.gt}" for m in field.metadata if getattr(m, "gt", None) is not None),
                    None))
    high = next((m.le for m in field.metadata if getattr(m, "le", None) is not None), None)
    if low and high is not None and low.startswith(">="):
        return f" {low[3:]}..{high}"
    return "".join(f" {part}" for part in (low, None if high is None else f"<= {high}") if part)


def _type_name(annotation: Any, metadata: Any = ()) -> str:  # noqa: PLR0911 - one per kind
    """``metadata``: a field's own (pydantic moves a top-level Annotated's there)."""
    from mlship.config.fields import grammar_of

    origin = get_origin(annotation)
    args = get_args(annotation)
    if annotation is str and grammar_of(metadata):
        return str(grammar_of(metadata))
    if origin is Literal:
        return " \\| ".join(f"`{value}`" for value in args)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(arg, metadata) for arg in args)
    if origin is list:
        return f"list of {_type_name(args[0])}"
    if origin is dict:
        key = _type_name(args[0])
        return f"map of {_type_name(args[1])}" if key == "str" else \
            f"map of {key} to {_type_name(args[1])}"
    if getattr(annotation, "__metadata__", None):  # Annotated aliases (DnsLabel, Quantity)
        return _type_name(args[0], annotation.__metadata__)
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "mapping"
    return getattr(annotation, "__name__", str(annotation))


def write(repo: Path) -> None:
    """Regenerate docs/configuration.md's key reference and docs/mlship.schema.json."""
    from mlship.config.load import json_schema_text

    doc = repo / "docs" / "configuration.md"
    text = doc.read_text(encoding="utf-8")
    start, end = text.index(BEGIN), text.index(END) + len(END) + 1
    doc.write_text(text[:start] + key_reference() + text[end:], encoding="utf-8")
    (repo / "docs" / "mlship.schema.json").write_text(json_schema_text(), encoding="utf-8")
    api = repo / "docs" / "runtime-api.md"
    text = api.read_text(encoding="utf-8")
    start, end = text.index(RUNTIME_BEGIN), text.index(RUNTIME_END) + len(RUNTIME_END) + 1
    api.write_text(text[:start] + runtime_settings_table() + text[end:], encoding="utf-8")


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--write"]:  # from the checkout's root
        write(Path.cwd())
    else:
        print(key_reference(), end="")
