"""pydantic and YAML errors -> one line a person can act on.

Format: ``<file>: <key.path>: <value> is invalid: <what is allowed>`` (plus ``(line N)`` when
the key can be found in the file, and ``(from MLSHIP_X)`` when an environment variable set it).
Only the first error is reported: fixing one mistake at a time with an exact pointer beats a
wall of consequential errors.
"""

from __future__ import annotations

import difflib
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import BaseModel, ValidationError
    from pydantic_core import ErrorDetails

_TYPE_WORDS = {
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
    "float_type": "a number", "float_parsing": "a number", "bool_type": "true or false",
    "bool_parsing": "true or false", "string_type": "a string", "dict_type": "a mapping",
    "model_type": "a mapping", "model_attributes_type": "a mapping", "list_type": "a list",
}
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_./\[\]-]+")
_BOUNDS = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=",
           "less_than": "<"}


def describe_validation_error(err: ValidationError, root: type[BaseModel], *, label: str,
                              text: str | None, sources: dict[tuple[str, ...], str],
                              prefix: tuple[str, ...] = ()) -> str:
    """The first error of validating ``root`` as one line; an unknown key gets a suggestion
    from the fields of the section it sits in."""
    from mlship.config.fields import FieldProblem

    first: ErrorDetails = err.errors(include_url=False)[0]
    loc = tuple(str(part) for part in first["loc"] if part != "[key]")
    error = (first.get("ctx") or {}).get("error")
    if isinstance(error, FieldProblem):
        loc = loc + error.parts
        what = f"{_show(error.value)} is invalid: {error.allowed}"
    elif first["type"] == "extra_forbidden":
        what = "unknown key" + _did_you_mean(root, loc)
    elif first["type"] == "missing":
        what = "is required"
    else:
        what = f"{_show(first['input'])} is invalid: {_allowed(first)}"
    key = key_path(prefix + loc) or "(top level)"
    origin = _origin(loc, sources) or _line_of(text, loc)
    return f"{label}: {key}: {what}{origin}"


def key_path(parts: tuple[str, ...]) -> str:
    """``image.registry``; a key that is not plain text (a hostile map key) as ``labels['a\\n']``,
    so the line stays one line."""
    text = ""
    for part in parts:
        if _PLAIN_KEY.fullmatch(part):
            text += f".{part}" if text else part
        else:
            text += f"[{part!r}]"
    return text


def _allowed(error: ErrorDetails) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind in _TYPE_WORDS:
        return f"must be {_TYPE_WORDS[kind]}"
    if kind in _BOUNDS:
        bound = next(iter(ctx.values()))
        if isinstance(bound, float) and bound.is_integer():
            bound = int(bound)  # pydantic holds a float field's bounds as floats: "<= 1000"
        return f"must be {_BOUNDS[kind]} {bound}"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected', '')}"
    if kind == "string_pattern_mismatch":
        return f"must match {ctx.get('pattern')}"
    message = str(error["msg"])
    return message[0].lower() + message[1:] if message else kind


def _show(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (dict, list)):
        return type(value).__name__
    return str(value)


def _did_you_mean(root: type[BaseModel], loc: tuple[str, ...]) -> str:
    """Suggest the nearest known key of the section the unknown key sits in."""
    from pydantic import BaseModel

    model: type[BaseModel] | None = root
    for part in loc[:-1]:
        if model is None or part not in model.model_fields:
            model = None
            break
        annotation = model.model_fields[part].annotation
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) \
            else _list_item_model(annotation)
    if model is None:
        return ""
    known = list(model.model_fields)
    close = difflib.get_close_matches(loc[-1], known, n=1, cutoff=0.6)
    if close:
        return f"; did you mean '{close[0]}'?"
    return f"; allowed: {', '.join(known)}"


def _list_item_model(annotation: Any) -> type[BaseModel] | None:
    from typing import get_args

    from pydantic import BaseModel

    for arg in get_args(annotation):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def _origin(loc: tuple[str, ...], sources: dict[tuple[str, ...], str]) -> str:
    for length in range(len(loc), 0, -1):
        if loc[:length] in sources:
            return f" (from {sources[loc[:length]]})"
    return ""


def _line_of(text: str | None, loc: tuple[str, ...]) -> str:
    """The line of the deepest key of ``loc`` present in the file, from the YAML node tree."""
    if not text:
        return ""
    import yaml

    from mlship.config.source import compose

    node = compose(text)
    line = None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if k.value == part), None)
            if match is None:
                break
            line, node = match[0].start_mark.line + 1, match[1]
        elif isinstance(node, yaml.SequenceNode) and part.isdigit() and int(part) < len(node.value):
            node = node.value[int(part)]
            line = node.start_mark.line + 1
        else:
            break
    return f" (line {line})" if line else ""
