"""Typed config + model signature -> a ``Bundle`` of files (Dockerfile, manifests); no I/O.

Templates are flat Jinja files under ``templates/`` (``mlship/templates`` in the wheel), one
per output, rendered with ``StrictUndefined`` so a missing value fails loudly. YAML scalars go
through the ``tojson`` filter (JSON strings are valid YAML), maps and lists through
``to_yaml``; every YAML output is parsed back before it leaves ``render`` so a template can
never ship a broken document. Writing the bundle is ``write_bundle``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from collections.abc import Mapping

    import jinja2

    from mlship.config.schema import MlshipConfig
    from mlship.model.baseline import BaselineFile
    from mlship.model.inspect import ModelSignature
    from mlship.render.context import RenderContext

Target = Literal["kubernetes", "kserve"]


@dataclass(frozen=True)
class Bundle:
    """Rendered files by relative path, in a stable order."""

    target: str
    files: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {"target": self.target, "files": sorted(self.files)}


def render(config: MlshipConfig, signature: ModelSignature | None, *,
           target: Target = "kubernetes", baseline: BaselineFile | None = None,
           extras: Mapping[str, ModelSignature] | None = None) -> Bundle:
    """``baseline`` is required when ``drift.enabled`` (``mlship.cli.render.drift_baseline``);
    ``extras`` are the signatures of the local files of ``models``, by name."""
    from mlship.render.context import build_context

    context = build_context(config, signature, baseline, extras=extras)
    outputs = _outputs(context, target)
    env = _environment()
    files: dict[str, str] = {}
    for out_path, template in outputs:
        files[out_path] = _tidy(out_path, env.get_template(template).render(ctx=context))
    files["k8s/kustomization.yaml"] = env.get_template("k8s/kustomization.yaml.jinja").render(
        ctx=context, resources=[path.removeprefix("k8s/") for path, _ in outputs
                                if path.startswith("k8s/") and path.endswith(".yaml")])
    for path, text in files.items():
        _check_parses(path, text)
    return Bundle(target=target, files=dict(sorted(files.items())))


def _outputs(ctx: RenderContext, target: Target) -> list[tuple[str, str]]:
    """(output path, template) pairs: the whole decision of which objects exist."""
    dockerfile = "docker/Dockerfile.cuda.jinja" if ctx.gpu else "docker/Dockerfile.jinja"
    chosen: list[tuple[str, bool]] = [
        ("k8s/namespace.yaml", ctx.create_namespace),
        ("k8s/serviceaccount.yaml", True),
        ("k8s/configmap.yaml", True),
        ("k8s/persistentvolumeclaim.yaml", ctx.pvc is not None),
        ("k8s/networkpolicy.yaml", True),
        ("k8s/drift-baseline.yaml", ctx.drift is not None),
    ]
    if target == "kserve":
        chosen += [("k8s/inferenceservice.yaml", True)]
    else:
        chosen += [
            ("k8s/deployment.yaml", True),
            ("k8s/service.yaml", True),
            ("k8s/service-stable.yaml", ctx.rollout is not None),
            ("k8s/service-canary.yaml", ctx.rollout is not None),
            ("k8s/virtualservice.yaml", _route_kind(ctx) == "istio"),
            ("k8s/httproute.yaml", _route_kind(ctx) == "gateway"),
            ("k8s/horizontalpodautoscaler.yaml", ctx.hpa is not None),
            ("k8s/poddisruptionbudget.yaml", ctx.pdb_max_unavailable is not None),
            ("k8s/servicemonitor.yaml", ctx.monitoring["service_monitor"]),
            ("k8s/prometheusrule.yaml",
             ctx.monitoring["prometheus_rule"] or ctx.drift is not None),
            ("k8s/grafana-dashboard.yaml", ctx.monitoring["dashboard"] == "configmap"),
            ("grafana/dashboard.json", ctx.monitoring["dashboard"] == "file"),
            ("k8s/cronjob.yaml", ctx.batch is not None),
        ]
    outputs = [("Dockerfile", dockerfile), (".dockerignore", "docker/dockerignore.jinja")]
    outputs += [(path, f"{path}.jinja") for path, wanted in chosen if wanted]
    return outputs


def _route_kind(ctx: RenderContext) -> str | None:
    return ctx.rollout["kind"] if ctx.rollout else None


def _environment() -> jinja2.Environment:
    import jinja2

    from mlship.render.context import RUNTIME_UID
    from mlship.resources import templates_dir

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["tojson"] = to_json
    env.filters["yaml_quote"] = to_json
    env.filters["to_yaml"] = to_yaml
    env.filters["yaml_fields"] = yaml_fields
    env.globals["uid"] = RUNTIME_UID
    env.filters["dashboard_json"] = _dashboard_json
    return env


def to_json(value: Any) -> str:
    return json.dumps(value, sort_keys=False, ensure_ascii=False)


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
    the blank line left for an empty result is dropped by ``_tidy``."""
    present = {key: value for key, value in mapping.items() if value not in (None, {}, [])}
    if not present:
        return ""
    return " " * indent + to_yaml(present, indent)


def _tidy(path: str, text: str) -> str:
    if not path.endswith(".yaml"):
        return text
    return "".join(line for line in text.splitlines(keepends=True) if line.strip())


def _dashboard_json(ctx: RenderContext, indent: int | None = None) -> str:
    from mlship.render.dashboard import dashboard

    return json.dumps(dashboard(ctx.name, ctx.namespace), indent=indent, sort_keys=True)


def _check_parses(path: str, text: str) -> None:
    """A template bug must not reach a cluster: every YAML and JSON output parses."""
    import yaml

    try:
        if path.endswith(".yaml"):
            documents = list(yaml.safe_load_all(text))
            if not all(isinstance(doc, dict) for doc in documents):
                raise ValueError("a document is not a mapping")
        elif path.endswith(".json"):
            json.loads(text)
    except (yaml.YAMLError, ValueError) as err:
        # A bug in mlship, not in the user's config: surfaces as an internal error (exit 1).
        raise RuntimeError(f"template output {path} is not valid: {err}") from err


def write_bundle(bundle: Bundle, out_dir: Path) -> list[Path]:
    """Write every file under ``out_dir``; files no longer rendered are removed from k8s/."""
    written = []
    stale = out_dir / "k8s"
    if stale.is_dir():
        for old in stale.glob("*.yaml"):
            if f"k8s/{old.name}" not in bundle.files:
                old.unlink()
    for relative, text in bundle.files.items():
        target = out_dir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        written.append(target)
    return written
