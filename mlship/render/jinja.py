"""The one Jinja environment every rendered file comes from, and its escaping filters.

Templates hold layout only; every value a template prints goes through the filter of the
language it lands in:

- ``yaml``: a YAML scalar (a JSON string, ASCII-only, so no character can end the line);
- ``to_yaml(indent)`` / ``yaml_fields(indent)``: maps and lists as block YAML;
- ``json``: a JSON value (dashboards);
- ``dockerfile``: a double-quoted Dockerfile ``ENV``/``LABEL`` value, ``$`` escaped so nothing
  expands at build time;
- ``shell``: one shell word (``shlex.quote``), for generated ``run:``/``script:`` lines;
- ``run``: a generated shell line in a GitHub ``run: |`` block, checked to be one safe line;
- ``item``: a shell line as a YAML list item;
- ``reference``: an image reference where nothing can be quoted (``FROM``), checked against
  the reference grammar.

A value that no filter can carry safely (a line break in a Dockerfile value, a GitHub
``${{`` expression in a shell word) is refused at the config edge (``mlship.config.fields``);
reaching a filter is a bug here, so the filter raises rather than print it.

Values are ``[[ ... ]]``, blocks ``{% ... %}``: ``{{ }}`` belongs to the outputs themselves
(GitHub Actions expressions, Prometheus alert templates) and stays literal.
"""

from __future__ import annotations

import functools
import json
import re
import shlex
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import jinja2

RUNTIME_UID = 10001
# What YAML reads as a line break (\x85, U+2028/9 too) or refuses in a block, and NUL.
_LINE_BREAK = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


class UnsafeValueError(RuntimeError):
    """A value reached a filter that cannot carry it: the config edge should have refused it.
    ``reason`` says what in it no quoting can carry."""

    def __init__(self, reason: str, value: str) -> None:
        super().__init__(f"{reason}: {value!r}")
        self.reason = reason
        self.value = value


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
                       item=yaml_item, run=run_line, reference=image_reference)
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
        raise UnsafeValueError("a control character cannot be written into a Dockerfile", text)
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$")
    return f'"{escaped}"'


def shell_word(value: Any) -> str:
    """One POSIX shell word. GitHub expands ``${{ }}`` before any shell runs, so a value
    holding one cannot be quoted into safety: it is refused, as are line breaks (a step's line
    sits in a YAML block) and other control characters."""
    text = str(value)
    if "${{" in text:
        raise UnsafeValueError("GitHub expands ${{ }} before the shell runs, whatever the "
                               "quoting", text)
    if _LINE_BREAK.search(text):
        raise UnsafeValueError("a line break or control character cannot be in one line of a "
                               "step", text)
    return shlex.quote(text)


def run_line(line: str) -> str:
    """A whole generated shell line inside a YAML block scalar (a GitHub ``run: |``): printed
    as is, after checking nothing in it could end the block's line or be expanded by GitHub."""
    if "${{" in line or _LINE_BREAK.search(line):
        raise UnsafeValueError("not one safe line of a run: block", line)
    return line


def image_reference(value: Any) -> str:
    """An image reference where no quoting exists (a Dockerfile ``FROM``): checked against the
    reference grammar, which holds no character the Dockerfile could read otherwise."""
    from mlship.config.quantities import parse_image_ref

    text = str(value)
    try:
        parse_image_ref(text)
    except ValueError:
        raise UnsafeValueError("not an image reference", text) from None
    return text


def yaml_item(command: str) -> str:
    """A shell line as a YAML list item: plain when it reads back unchanged, else quoted."""
    import yaml

    try:
        plain = yaml.safe_load(f"- {command}") == [command]
    except yaml.YAMLError:
        plain = False
    return command if plain else yaml_scalar(command)
