"""The cluster operations a rollout is made of: scale, wait, route, switch, set the image.

Each is one small, idempotent change through ``mlship.kube`` (JSON merge patches as field
manager ``mlship-rollout``, so ``kubectl get --show-managed-fields`` says who moved what), which
is what lets abort and promote be rerun safely from any process.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mlship.config.rollout import canary_name, stable_service_name
from mlship.errors import ClusterError, MlshipTimeoutError, RolloutError
from mlship.kube import match_labels
from mlship.render.traffic import (
    CANARY,
    GATEWAY_API,
    ISTIO_API,
    STABLE,
    TRACK_LABEL,
    canary_deployment,
    gateway_rules,
    istio_http,
    model_container,
    pull_policy,
)
from mlship.rollout.state import ROLLOUT_MANAGER

if TYPE_CHECKING:
    from mlship.config.rollout import HeaderMatch, RolloutSettings
    from mlship.kube import Cluster

POLL_S = 0.25
VERSION_LABEL = "app.kubernetes.io/version"
WRITE_ATTEMPTS = 5


@dataclass
class App:
    """One app's objects in one namespace, and the moves a rollout makes on them."""

    cluster: Cluster
    namespace: str
    name: str
    settings: RolloutSettings
    port: int
    timeout_s: float
    # Called between polls while waiting: the driver uses it to notice an abort from elsewhere.
    guard: Callable[[], None] = field(default=lambda: None)
    # A bandit's arms past NAME-canary (NAME-canary-2, ...): restore deletes their Deployment
    # and Service.
    extra_arms: list[str] = field(default_factory=list)
    # Every V2 name the pods serve (models and pipelines); their requests judge a version.
    served: tuple[str, ...] = ()
    skip_checks: bool = False  # --skip-checks: the new image is not looked up first
    # model.version of the config the rollout runs with: the new version's label, on the
    # canary's pods and on the stable's once promoted (so the next deploy changes nothing).
    version: str | None = None

    @property
    def metric_models(self) -> tuple[str, ...]:
        return self.served or (self.name,)

    @property
    def canary(self) -> str:
        return canary_name(self.name)

    @property
    def traffic(self) -> str:
        return self.settings.traffic

    def _where(self, kind: str, name: str) -> str:
        return f"{kind} {self.namespace}/{name}"

    def preflight(self, stable: dict[str, Any]) -> None:
        """What the chosen traffic mode needs exists, before anything is changed."""
        labels = stable["spec"]["template"].get("metadata", {}).get("labels") or {}
        if labels.get(TRACK_LABEL) != STABLE:
            raise RolloutError(
                f"{self._where('Deployment', self.name)}: its pods lack the label "
                f"{TRACK_LABEL}={STABLE}, so stable and canary pods cannot be told apart",
                hint="render and deploy the stable version with this mlship first")
        if self.traffic == "replicas":
            self._require("v1", "Service", self.name, "the Service")
            return
        for service in (stable_service_name(self.name), self.canary):
            self._require("v1", "Service", service, f"rollout.traffic {self.traffic} needs")
        api, kind = (ISTIO_API, "VirtualService") if self.traffic == "istio" else \
            (GATEWAY_API, "HTTPRoute")
        self._require(api, kind, self.name, f"rollout.traffic {self.traffic} needs")

    def check_image(self, stable: dict[str, Any], image: str) -> None:
        """The new image is in its registry, as deploy checks before it applies anything:
        RegistryError (exit 6) naming it otherwise."""
        from mlship.cluster.checks import check_images

        if not self.skip_checks:
            check_images([canary_deployment(stable, image, "check", 1, CANARY)])

    def _require(self, api_version: str, kind: str, name: str, why: str) -> None:
        if self.cluster.get(api_version, kind, name, self.namespace) is None:
            raise RolloutError(f"{why} {self._where(kind, name)}, which does not exist",
                               hint="render with this rollout.traffic and deploy the output "
                                    "(mlship render; mlship deploy)")

    # -- the canary Deployment --

    def create_canary(self, stable: dict[str, Any], image: str, revision: str,
                      replicas: int, track: str = CANARY) -> None:
        # Entirely the rollout's object: force takes over fields a previous rollout scaled.
        canary = canary_deployment(stable, image, revision, replicas, track)
        if self.version is not None:
            canary["spec"]["template"]["metadata"]["labels"][VERSION_LABEL] = self.version
        self.cluster.apply(canary, force=True)

    def canary_deployment(self) -> dict[str, Any] | None:
        return self.cluster.get("apps/v1", "Deployment", self.canary, self.namespace)

    def scale_canary(self, replicas: int) -> None:
        if replicas == 0 and self.canary_deployment() is None:
            return
        self.cluster.patch("apps/v1", "Deployment", self.canary, self.namespace,
                           {"spec": {"replicas": replicas}}, field_manager=ROLLOUT_MANAGER)

    def wait_ready(self, name: str) -> None:
        """Every replica of Deployment ``name`` updated and available, within the timeout.

        Watched as deploy watches its rollout (``mlship.cluster.wait``): a pod that cannot
        start (ErrImagePull/ImagePullBackOff, CrashLoopBackOff with its last log line,
        OOMKilled, an admission refusal) ends the wait at once with a RolloutError naming it,
        instead of waiting out the timeout."""
        from mlship.cluster.wait import wait_rollout

        status = wait_rollout(self.cluster, self.namespace, name, timeout=self.timeout_s,
                              on_update=lambda _: self.guard(), poll_s=POLL_S)
        if status.outcome == "complete":
            return
        where = self._where("Deployment", name)
        if status.outcome == "failed":
            raise RolloutError(f"{where}: {status.reason}",
                               hint=f"kubectl -n {self.namespace} describe deployment {name}")
        raise MlshipTimeoutError(
            f"{where}: {status.available}/{status.desired} pods available "
            f"({status.updated} updated) after {self.timeout_s:.0f} s"
            + (f": {status.reason}" if status.reason else ""),
            hint=f"raise --timeout, or see kubectl -n {self.namespace} describe "
                 f"deployment {name}")

    # -- routing --

    def route(self, weight: int, matches: list[HeaderMatch] | tuple[()] = (),
              backends: list[tuple[str, int]] | None = None) -> None:
        """Give the canary ``weight`` % (and header-matched requests, for A/B); a bandit
        passes ``backends``, (Service, weight) for each of its arms."""
        if self.traffic == "istio":
            self.cluster.patch(ISTIO_API, "VirtualService", self.name, self.namespace,
                               {"spec": {"http": istio_http(self.name, self.namespace,
                                                            self.port, weight, matches,
                                                            backends)}},
                               field_manager=ROLLOUT_MANAGER)
        elif self.traffic == "gateway":
            self.cluster.patch(GATEWAY_API, "HTTPRoute", self.name, self.namespace,
                               {"spec": {"rules": gateway_rules(self.name, self.port, weight,
                                                                matches, backends)}},
                               field_manager=ROLLOUT_MANAGER)
        else:
            # The replica ratio is the split below 100 %; at 100 % only canary pods serve.
            self.select(CANARY if weight >= 100 else None)

    def select(self, track: str | None) -> None:
        """The shared Service selects one track's pods, or (None) every pod of the app."""
        self.cluster.patch("v1", "Service", self.name, self.namespace,
                           {"spec": {"selector": {TRACK_LABEL: track}}},
                           field_manager=ROLLOUT_MANAGER)

    def service_track(self) -> str | None:
        service = self.cluster.get("v1", "Service", self.name, self.namespace) or {}
        return (service.get("spec", {}).get("selector") or {}).get(TRACK_LABEL)

    def pin_stable(self) -> None:
        """Before a blue-green's green exists: the shared Service selects stable pods only,
        so green pods do not become its endpoints as they turn ready (replica traffic; with
        Istio or Gateway API the route already sends everything to the stable Service)."""
        if self.traffic == "replicas":
            self.select(STABLE)

    def switch_to_canary(self) -> None:
        """Blue-green: every request to the new version at once."""
        if self.traffic == "replicas":
            self.select(CANARY)
        else:
            self.route(100)

    def restore(self) -> None:
        """All traffic to the stable pods, and no canary pods left."""
        if self.traffic != "replicas":
            self.route(0)
        elif self.service_track() == CANARY:
            self.select(STABLE)  # one atomic switch back; the key goes after the canary
        leaving = self._pod_selectors([self.canary, *self.extra_arms])
        self.scale_canary(0)
        # A bandit made these for itself (render knows only the first canary): gone with it.
        for extra in self.extra_arms:
            self.cluster.delete("apps/v1", "Deployment", extra, self.namespace)
            self.cluster.delete("v1", "Service", extra, self.namespace)
        # A terminating pod keeps answering through its preStop sleep while kube-proxies catch
        # up (seen on a real node: a faulty canary answered after "traffic is back on
        # stable"). Only once its pods are gone is that sentence true.
        self._wait_gone(leaving)
        if self.traffic == "replicas" and self.service_track() is not None:
            self.select(None)
        from mlship.rollout import shadow_ops  # a shadow's objects and the stable's mirroring

        if shadow_ops.remove(self.cluster, self.namespace, self.name):
            self.wait_ready(self.name)

    def _pod_selectors(self, deployments: list[str]) -> list[str]:
        found = (self.cluster.get("apps/v1", "Deployment", name, self.namespace)
                 for name in deployments)
        return [selector for deployment in found if deployment is not None
                if (selector := match_labels(deployment["spec"].get("selector")))]

    def _wait_gone(self, selectors: list[str]) -> None:
        deadline = time.monotonic() + self.timeout_s
        while True:
            left = [pod["metadata"]["name"] for selector in selectors
                    for pod in self.cluster.list("v1", "Pod", self.namespace, selector)]
            if not left:
                return
            if time.monotonic() > deadline:
                raise MlshipTimeoutError(
                    f"namespace {self.namespace}: pods {', '.join(sorted(left))} still "
                    f"terminating after {self.timeout_s:.0f} s; they may still answer requests",
                    hint=f"kubectl -n {self.namespace} describe pod {left[0]}")
            self.guard()
            time.sleep(POLL_S)

    # -- the stable Deployment --

    def stable_image(self, stable: dict[str, Any]) -> str:
        return str(model_container(stable["spec"]["template"]["spec"]["containers"])["image"])

    def set_stable_image(self, image: str) -> None:
        """Point the stable's model container at ``image`` (a rolling update, never a gap:
        the rendered strategy has maxUnavailable 0)."""
        for _ in range(WRITE_ATTEMPTS):
            stable = self.cluster.get("apps/v1", "Deployment", self.name, self.namespace)
            if stable is None:
                raise RolloutError(f"{self._where('Deployment', self.name)} disappeared")
            containers = [dict(item) for item in stable["spec"]["template"]["spec"]["containers"]]
            model_container(containers).update(image=image, imagePullPolicy=pull_policy(image))
            version = stable["metadata"]["resourceVersion"]
            template: dict[str, Any] = {"spec": {"containers": containers}}
            if self.version is not None:  # the pods say which version they run
                template["metadata"] = {"labels": {VERSION_LABEL: self.version}}
            # A merge patch replaces the list whole; the resourceVersion makes sure it is the
            # list as read, not one somebody changed meanwhile (then: read again, retry).
            try:
                self.cluster.patch("apps/v1", "Deployment", self.name, self.namespace,
                                   {"metadata": {"resourceVersion": version},
                                    "spec": {"template": template}},
                                   field_manager=ROLLOUT_MANAGER)
                return
            except ClusterError:
                again = self.cluster.get("apps/v1", "Deployment", self.name, self.namespace)
                if again is None or again["metadata"]["resourceVersion"] == version:
                    raise
        raise RolloutError(f"{self._where('Deployment', self.name)} keeps changing; could not "
                           f"set its image to {image}")


    def record_deployed(self, image: str, action: str) -> None:
        """Note on the stable Deployment that ``image`` is what it runs now, by digest unless
        --skip-checks (mlship.cluster.deployed: deploy and diff start from it)."""
        from mlship.cluster import deployed
        from mlship.cluster.checks import registry_digest
        from mlship.errors import MlshipError

        try:
            digest = None if self.skip_checks else registry_digest(image)
        except MlshipError:
            digest = None  # the check found it before the rollout; only the pin is lost
        deployed.record(self.cluster, self.namespace, self.name, image, digest, action,
                        field_manager=ROLLOUT_MANAGER)


def rolled_out(deployment: dict[str, Any]) -> bool:
    """What ``kubectl rollout status`` waits for: observed, updated, available, no old pods."""
    wanted = deployment.get("spec", {}).get("replicas", 1)
    status = deployment.get("status") or {}
    return bool(status.get("observedGeneration", 0) >= deployment["metadata"].get("generation", 0)
            and status.get("updatedReplicas", 0) >= wanted
            and status.get("availableReplicas", 0) >= wanted
            and status.get("replicas", 0) <= status.get("updatedReplicas", 0))
