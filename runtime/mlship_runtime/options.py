"""The runtime's command line and environment, read through the settings' declaration
(``mlship_runtime.settings``): one option and one ``MLSHIP_RUNTIME_<NAME>`` variable per
setting, parsed and checked by the setting itself.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from mlship_runtime.settings import DECLARED, ENV_PREFIX, Declared, RuntimeSettings, SettingError


def from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """Typed values of every ``MLSHIP_RUNTIME_<FIELD>`` present in ``environ``."""
    values: dict[str, Any] = {}
    for declared in DECLARED:
        raw = environ.get(declared.env)
        if raw is None:
            continue
        try:
            values[declared.name] = declared.parse(raw)
        except ValueError as exc:
            raise ValueError(f"{declared.env}: {exc}") from None
    return values


def _option_type(declared: Declared) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return declared.parse(text)
        except ValueError as exc:  # argparse prints it as "argument --x: ..."
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = declared.kind.__name__
    return parse


def build_parser(prog: str = "python -m mlship_runtime") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Serve an ONNX model over the Open Inference Protocol v2 (REST). Every "
                    f"option can also be set as an {ENV_PREFIX}<OPTION> environment variable.")
    for declared in DECLARED:
        parser.add_argument(
            declared.flag, dest=declared.name, type=_option_type(declared), default=None,
            metavar=option_metavar(declared),
            help=f"{option_help(declared)} [env {declared.env}]")
    return parser


def option_metavar(declared: Declared) -> str:
    return declared.name.upper() if not declared.spec.choices else "|".join(declared.spec.choices)


def option_help(declared: Declared) -> str:
    """The option's help line: its doc, default and what it accepts (also `mlship serve`'s)."""
    default = declared.default
    shown = "unset" if default in (None, "") else str(default).lower() \
        if isinstance(default, bool) else f"{default:g}" if isinstance(default, float) \
        else str(default)
    accepts = "" if declared.kind is bool or not (declared.spec.choices or
                                                  declared.spec.minimum is not None or
                                                  declared.spec.above is not None) \
        else f"; {declared.spec.expected()}"
    return f"{declared.spec.doc} (default: {shown}{accepts})"


def parse_settings(argv: Sequence[str] | None = None,
                   environ: Mapping[str, str] | None = None, *,
                   base: Mapping[str, Any] | None = None,
                   prog: str = "python -m mlship_runtime") -> RuntimeSettings:
    """``base`` (e.g. mlship.yaml's settings) first, env over it, argv over both; raises
    ``SystemExit(2)`` (argparse) or ``SettingError``/``ValueError``."""
    values = dict(base or {})
    values.update(from_env(os.environ if environ is None else environ))
    args = build_parser(prog).parse_args(argv)
    values.update({key: value for key, value in vars(args).items() if value is not None})
    if not values.get("model") and not values.get("models"):
        raise SettingError("model", None, "a model", sentence=f"pass --model PATH or set "
                           f"{ENV_PREFIX}MODEL (or --models FILE for several models)")
    return RuntimeSettings(**values)
