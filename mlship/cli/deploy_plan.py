"""What `mlship deploy` and `mlship diff` send: mlship.yaml rendered and planned, with the
recorded image (mlship.cluster.deployed) in place of its tag when the tag is that image."""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlship.cli import output

if TYPE_CHECKING:
    from mlship.config.schema import MlshipConfig
    from mlship.image.credentials import RegistryCredential
    from mlship.kube import Cluster


@dataclass(frozen=True)
class Planned:
    loaded: MlshipConfig  # with --namespace / --image applied
    objects: list[dict[str, Any]]  # (with the recorded image: with_recorded_image)
    image_given: bool  # --image: what to send is the user's word, no default applies

    @property
    def image(self) -> str | None:
        return deployment_image(self.objects)


def planned(config: Path, namespace: str | None, image: str | None) -> Planned:
    from mlship.cluster.apply import plan, with_overrides
    from mlship.config.load import load_config
    from mlship.model.signatures import model_signatures
    from mlship.render.bundle import render

    base = with_overrides(load_config(config), namespace=namespace)
    signature, extras = model_signatures(base, config, warn=output.warn)
    loaded = with_overrides(base, image=image)
    objects = plan(render(loaded, signature, extras=extras))
    return Planned(loaded, objects, image is not None)


def with_recorded_image(cluster: Cluster, plan: Planned, *, resolve: bool = True,
                        login: RegistryCredential | None = None) -> Planned:
    """``plan`` with the image recorded on the live Deployment when mlship.yaml's tag
    resolves to its digest (``resolve`` False: --skip-checks, the registry is not asked)."""
    from mlship.cluster.checks import registry_digest
    from mlship.cluster.deployed import default_image, recorded
    from mlship.errors import MlshipError

    configured = plan.image
    if plan.image_given or configured is None or not resolve:
        return plan
    live = cluster.get("apps/v1", "Deployment", plan.loaded.name, plan.loaded.namespace.name)
    entry = recorded(live)

    def digest(image: str) -> str | None:
        try:
            return registry_digest(image, login)
        except MlshipError as err:
            output.warn(f"{image}: could not ask the registry which digest it is "
                        f"({err.message}); sending it as mlship.yaml names it")
            return None

    kept = default_image(configured, entry, digest)
    if kept is None or entry is None:
        return plan
    output.info(f"image: {configured} is {kept.partition('@')[2]}, the image {entry.action} "
                f"put there ({entry.at}): keeping {kept}")
    return replace(plan, objects=_swapped(plan.objects, configured, kept))


def _swapped(objects: list[dict[str, Any]], configured: str,
             kept: str) -> list[dict[str, Any]]:
    """The planned objects with every container of ``configured`` on ``kept`` (the same image
    by its digest), with the pull policy render gives a digest; nothing else differs from
    mlship.yaml's render (a new render of the pinned reference would also drop what render
    notes about a tag, a metadata change for nothing)."""
    from mlship.cluster.objects import containers
    from mlship.render.traffic import pull_policy

    swapped = copy.deepcopy(objects)
    for _, _, container in containers(swapped):
        if container.get("image") == configured:
            container.update(image=kept, imagePullPolicy=pull_policy(kept))
    return swapped


def deployment_image(objects: list[dict[str, Any]]) -> str | None:
    for obj in objects:
        if obj["kind"] == "Deployment":
            return str(obj["spec"]["template"]["spec"]["containers"][0]["image"])
    return None
