"""Typed config + model signature -> a ``Bundle`` of files (Dockerfile, manifests); no I/O.

Templates are flat Jinja files under ``templates/`` (``mlship/templates`` in the wheel), one
per output, rendered by the one environment of ``mlship.render.jinja`` (``StrictUndefined``,
an escaping filter per output language); every YAML and JSON output is parsed back before it
leaves ``render`` so a template can never ship a broken document. Writing the bundle is
``write_bundle``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from mlship.render.identity import ImageIdentity
from mlship.render.specs import Manifest

if TYPE_CHECKING:
    from collections.abc import Mapping

    from mlship.config.cuda import GpuRelease
    from mlship.config.schema import MlshipConfig
    from mlship.model.baseline import BaselineFile
    from mlship.model.facts import ModelSignature
    from mlship.render.context import RenderContext

Target = Literal["kubernetes", "kserve"]
NAMESPACE_DIR = "k8s/namespace/"  # the shared Namespace, with its own kustomization


@dataclass(frozen=True)
class BakedFile:
    """A local file the image bakes in: ``source`` on this machine, ``target`` in the build
    context (``model/...``, copied to ``/models/...`` by the Dockerfile)."""

    source: Path
    target: str


@dataclass(frozen=True)
class Bundle:
    """What render produced, for the stages after it: the files by relative path (stable
    order), the Kubernetes objects they hold (parsed once, in file order), the image they
    describe, and the local files its build context needs."""

    target: str
    files: dict[str, str]
    objects: tuple[Manifest, ...]
    identity: ImageIdentity
    base_image: str
    baked: tuple[BakedFile, ...] = ()
    # The onnxruntime-gpu release a CUDA image installs (its GPU lock line); None on CPU.
    gpu_release: GpuRelease | None = None
    # What a user should know before applying this (e.g. an image no node can pull).
    warnings: tuple[str, ...] = ()

    def summary(self) -> dict[str, Any]:
        return {"target": self.target, "files": sorted(self.files)}

    def only(self, *paths: str) -> Bundle:
        """The same bundle holding only ``paths`` of its files."""
        return replace(self, files={path: text for path, text in self.files.items()
                                    if path in paths})


def render(config: MlshipConfig, signature: ModelSignature | None, *,
           target: Target = "kubernetes", baseline: BaselineFile | None = None,
           extras: Mapping[str, ModelSignature] | None = None,
           base_digest: str | None = None) -> Bundle:
    """``baseline`` is required when ``drift.enabled`` (``mlship.cli.render.drift_baseline``);
    ``extras`` are the signatures of the local files of ``models``, by name; ``base_digest``
    (the base image's registry digest, once known) pins the Dockerfile's FROM."""
    from mlship.render.context import build_context, local_image_warning
    from mlship.render.jinja import render_template

    context = build_context(config, signature, baseline, extras=extras, target=target,
                            base_digest=base_digest)
    outputs = _outputs(context, target)
    files: dict[str, str] = {}
    for out_path, template in outputs:
        files[out_path] = _tidy(out_path, render_template(template, ctx=context))
    # The app's kustomization never lists the Namespace: other apps may share it, and
    # `kubectl delete -k` of one app must not delete theirs. k8s/namespace/ is its own.
    for folder in ("k8s/", NAMESPACE_DIR):
        files[f"{folder}kustomization.yaml"] = render_template(
            "k8s/kustomization.yaml.jinja", ctx=context,
            resources=[path.removeprefix(folder) for path, _ in outputs
                       if path.startswith(folder) and path.endswith(".yaml")
                       and "/" not in path.removeprefix(folder)])
    if not context.create_namespace:
        del files[f"{NAMESPACE_DIR}kustomization.yaml"]
    files = dict(sorted(files.items()))
    objects = tuple(obj for path, text in files.items() for obj in _parsed(path, text)
                    if path.startswith("k8s/") and not path.endswith("kustomization.yaml"))
    return Bundle(target=target, files=files, objects=objects, identity=context.identity,
                  base_image=context.base_image, baked=_baked(config, signature, extras),
                  gpu_release=context.gpu_release,
                  warnings=tuple(filter(None, [local_image_warning(config, context.image)])))


def _baked(config: MlshipConfig, signature: ModelSignature | None,
           extras: Mapping[str, ModelSignature] | None) -> tuple[BakedFile, ...]:
    """The model files the image bakes: each with its external data, the main model under
    model/, each of ``models`` under model/NAME/ (where ``render.runtime_env`` points)."""
    folders = [("model", signature)] if config.model.kind == "image" else []
    folders += [(f"model/{name}", extra) for name, extra in (extras or {}).items()]
    baked = []
    for folder, inspected in folders:
        if inspected is None:
            continue
        source = Path(inspected.path)
        baked.append(BakedFile(source, f"{folder}/{source.name}"))
        baked += [BakedFile(source.parent / data.path, f"{folder}/{data.path}")
                  for data in inspected.external_data]
    return tuple(baked)


def _outputs(ctx: RenderContext, target: Target) -> list[tuple[str, str]]:
    """(output path, template) pairs: the whole decision of which objects exist."""
    chosen: list[tuple[str, bool]] = [
        (f"{NAMESPACE_DIR}namespace.yaml", ctx.create_namespace),
        ("k8s/serviceaccount.yaml", True),
        ("k8s/configmap.yaml", True),
        ("k8s/persistentvolumeclaim.yaml", ctx.pvc is not None),
        ("k8s/networkpolicy.yaml", True),
        ("k8s/peerauthentication.yaml", ctx.mesh is not None),
        ("k8s/authorizationpolicy.yaml", ctx.mesh is not None),
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
            ("k8s/servicemonitor.yaml", ctx.monitoring.service_monitor),
            ("k8s/prometheusrule.yaml",
             ctx.monitoring.prometheus_rule or ctx.drift is not None),
            ("k8s/grafana-dashboard.yaml", ctx.monitoring.dashboard == "configmap"),
            ("grafana/dashboard.json", ctx.monitoring.dashboard == "file"),
            ("k8s/cronjob.yaml", ctx.batch is not None),
        ]
    outputs = [("Dockerfile", "docker/Dockerfile.jinja"),
               (".dockerignore", "docker/dockerignore.jinja")]
    outputs += [(path, f"{path.replace(NAMESPACE_DIR, 'k8s/')}.jinja")
                for path, wanted in chosen if wanted]
    return outputs


def _route_kind(ctx: RenderContext) -> str | None:
    return ctx.rollout.kind if ctx.rollout else None


def _tidy(path: str, text: str) -> str:
    if not path.endswith(".yaml"):
        return text
    return "".join(line for line in text.splitlines(keepends=True) if line.strip())


def _parsed(path: str, text: str) -> list[Manifest]:
    """A template bug must not reach a cluster: every YAML and JSON output parses; the YAML
    documents are returned (the bundle's objects)."""
    import yaml

    try:
        if path.endswith(".yaml"):
            documents = [doc for doc in yaml.safe_load_all(text) if doc is not None]
            if not all(isinstance(doc, dict) for doc in documents):
                raise ValueError("a document is not a mapping")
            return documents
        if path.endswith(".json"):
            json.loads(text)
        return []
    except (yaml.YAMLError, ValueError) as err:
        # A bug in mlship, not in the user's config: surfaces as an internal error (exit 1).
        raise RuntimeError(f"template output {path} is not valid: {err}") from err


def write_bundle(bundle: Bundle, out_dir: Path) -> list[Path]:
    """Write every file under ``out_dir``; files no longer rendered are removed from k8s/
    and k8s/namespace/."""
    written = []
    for folder in ("k8s", NAMESPACE_DIR.rstrip("/")):
        stale = out_dir / folder
        if stale.is_dir():
            for old in stale.glob("*.yaml"):
                if f"{folder}/{old.name}" not in bundle.files:
                    old.unlink()
    for relative, text in bundle.files.items():
        target = out_dir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        written.append(target)
    return written
