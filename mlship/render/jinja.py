"""The one Jinja environment every rendered file comes from, and its escaping filters.

Templates hold layout only; every value a template prints goes through the filter of the
language it lands in:

- ``yaml``: a YAML scalar (a JSON string, ASCII-only, so no character can end the line);
- ``to_yaml(indent)`` / ``yaml_fields(indent)``: maps and lists as block YAML;
- ``json``: a JSON value (dashboards);
- ``dockerfile``: a double-quoted Dockerfile ``ENV``/``LABEL`` value, ``$`` escaped so nothing
  expands at build time;
- ``shell``: one shell word (``shlex.quote``), for generated ``run:``/``script:`` lines;
- ``item``: a shell line as a YAML list item.

A value that no filter can carry safely (a line break in a Dockerfile value, a GitHub
``${{`` expression in a shell word) is refused at the config edge (``mlship.config.fields``);
reaching a filter is a bug here, so the filter raises rather than print it.

Values are ``[[ ... ]]``, blocks ``{% ... %}``: ``{{ }}`` belongs to the outputs themselves
(GitHub Actions expressions, Prometheus alert templates) and stays literal.
"""

from __future__ import annotations

import functools
import json
import shlex
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import jinja2

RUNTIME_UID = 10001


class UnsafeValueError(RuntimeError):
    """A value reached a filter that cannot carry it: the config edge should have refused it."""


@functools.cache
def environment() -> jinja2.Environment:
    import jinja2

    from mlship.resources import templates_dir

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
        variable_start_string="[[",
        variable_end_string="]]",
    )
    env.filters.update(yaml=yaml_scalar, to_yaml=to_yaml, yaml_fields=yaml_fields,
                       json=json_value, dockerfile=dockerfile_value, shell=shell_word,
                       item=yaml_item)
    env.globals["uid"] = RUNTIME_UID
    return env


def render_template(template: str, /, **values: Any) -> str:
    return environment().get_template(template).render(**values)


def yaml_scalar(value: Any) -> str:
    """A YAML flow scalar: JSON is a subset of YAML, and ASCII-only output keeps characters
    YAML reads as line breaks (U+0085, U+2028) escaped."""
    return json.dumps(value, ensure_ascii=True)


def json_value(value: Any, indent: int | None = None) -> str:
    return json.dumps(value, indent=indent, sort_keys=True)


def to_yaml(value: Any, indent: int = 0) -> str:
    """Block YAML for a map or list, its lines after the first indented by ``indent``."""
    import yaml

    class _IndentedLists(yaml.SafeDumper):
        # Indent list items under their key, as the hand-written template lines do.
        def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
            super().increase_indent(flow, False)

    text = yaml.dump(value, Dumper=_IndentedLists, default_flow_style=False, sort_keys=False,
                     width=4096, allow_unicode=True).rstrip("\n")
    if text.endswith("\n..."):
        text = text[: -len("\n...")]
    return text.replace("\n", "\n" + " " * indent)


def yaml_fields(mapping: dict[str, Any], indent: int) -> str:
    """The non-empty entries of ``mapping`` as block YAML lines at ``indent``; "" if none.

    Lets a template place optional fields (tolerations, annotations) without an ``if`` each;
    the blank line left for an empty result is dropped after rendering."""
    present = {key: value for key, value in mapping.items() if value not in (None, {}, [])}
    if not present:
        return ""
    return " " * indent + to_yaml(present, indent)


def dockerfile_value(value: Any) -> str:
    """A double-quoted Dockerfile word: ``\\``, ``"`` and ``$`` escaped, so the builder reads
    back exactly ``value`` and expands nothing in it."""
    text = str(value)
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in text):
        raise UnsafeValueError(f"a control character cannot be written into a Dockerfile: "
                               f"{text!r}")
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$")
    return f'"{escaped}"'


def shell_word(value: Any) -> str:
    """One POSIX shell word. GitHub expands ``${{ }}`` before any shell runs, so a value
    holding one cannot be quoted into safety: it is refused."""
    text = str(value)
    if "${{" in text or "\n" in text or "\r" in text or "\x00" in text:
        raise UnsafeValueError(f"cannot be written as one shell word safely: {text!r}")
    return shlex.quote(text)


def yaml_item(command: str) -> str:
    """A shell line as a YAML list item: plain when it reads back unchanged, else quoted."""
    import yaml

    try:
        plain = yaml.safe_load(f"- {command}") == [command]
    except yaml.YAMLError:
        plain = False
    return command if plain else yaml_scalar(command)
