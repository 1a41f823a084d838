"""Checks before a deploy touches anything: what would otherwise fail minutes later, on a node.

- **image**: every image the pods use is in its registry (a manifest HEAD, with the
  credentials ``mlship push`` uses); a missing image is a RegistryError (exit 6).
- **quota** and **limits** (``mlship.cluster.quota``): the namespace's ResourceQuotas still fit
  at the rollout's peak, and every container fits its LimitRanges.
- **gpu**: for an extended resource such as ``nvidia.com/gpu``, some schedulable node that the
  pod's nodeSelector and tolerations allow offers enough of it; and where GPU Operator feature
  discovery labelled the nodes with their driver (``nvidia.com/cuda.runtime-version.*``,
  ``nvidia.com/cuda.driver-version.*`` or the older ``nvidia.com/cuda.driver.*``), one of them
  runs the image's CUDA version (``mlship.config.cuda``).

A check the user's RBAC cannot read (listing nodes needs a ClusterRole) is skipped with the
reason rather than failed: the apply that follows is what RBAC really governs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mlship.cluster.objects import (
    Check,
    PreflightError,
    containers,
    pod_specs,
    quantity,
    readable,
    shown,
)
from mlship.config import cuda
from mlship.config.quantities import parse_image_ref
from mlship.errors import MlshipError, RegistryError
from mlship.kube import describe

if TYPE_CHECKING:
    from mlship.cluster.apply import Preview
    from mlship.image.credentials import RegistryCredential
    from mlship.kube import Cluster


def run_checks(cluster: Cluster, previews: list[Preview], *, cuda_image: str | None = None,
               login: RegistryCredential | None = None) -> list[Check]:
    """Every check, in order (image, quota, limits, gpu), each run whatever the others found;
    then one error naming every failure (``combined``), or the checks' results."""
    from mlship.cluster.quota import check_limit_ranges, check_quota

    objects = [item.desired for item in previews]
    checks: list[Callable[[], Check]] = [
        lambda: check_images(objects, login), lambda: check_quota(cluster, previews),
        lambda: check_limit_ranges(cluster, objects),
        lambda: check_gpu_nodes(cluster, objects, cuda_image)]
    results: list[Check] = []
    failures: list[MlshipError] = []
    for check in checks:
        try:
            results.append(check())
        except (RegistryError, PreflightError) as err:
            failures.append(err)
    if failures:
        raise combined(failures)
    return results


def combined(failures: list[MlshipError]) -> MlshipError:
    """One error for every failed check: the first failure's type and exit code (checks run
    image first: a missing image, exit 6, outranks what the cluster lacks, exit 7), and a
    message listing them all; each stays in ``details.failures`` for --json."""
    if len(failures) == 1:
        return failures[0]
    first = failures[0]
    hints = list(dict.fromkeys(err.hint for err in failures if err.hint))
    error = type(first)(
        f"{len(failures)} pre-deploy checks failed: " + "; ".join(
            f"({number}) {err.message}" for number, err in enumerate(failures, 1)),
        hint="; ".join(hints) or None,
        details={"failures": [{"type": type(err).__name__, "message": err.message,
                               "exit_code": int(err.exit_code)} for err in failures]})
    error.exit_code = first.exit_code
    return error


# ---- image ----------------------------------------------------------------------------------


def check_images(objects: list[dict[str, Any]],
                 login: RegistryCredential | None = None) -> Check:
    found, unchecked = [], []
    for image in sorted({c["image"] for _, _, c in containers(objects)}):
        ref = parse_image_ref(image)
        if not ref.registry:
            unchecked.append(image)  # Docker Hub short name or a node-local image
            continue
        reference = ref.digest or ref.tag or "latest"
        response = _manifest_head(image, login)
        if response.status_code != 200:
            raise RegistryError(
                f"image {image}: not in the registry (HTTP {response.status_code} for the "
                f"manifest {reference})",
                hint="push it first (mlship build --push, or mlship push), or deploy the "
                     "reference `mlship push --json` printed with --image")
        digest = response.headers.get("Docker-Content-Digest", "")
        found.append(f"{image} ({digest})" if digest and digest not in image else image)
    detail = "; ".join([f"in the registry: {', '.join(found)}"] * bool(found) + [
        f"not checked (no registry in the reference): {', '.join(unchecked)}"] * bool(unchecked))
    return Check("image", "passed" if found else "skipped", detail or "no images")


def registry_digest(image: str, login: RegistryCredential | None = None) -> str | None:
    """The digest the registry serves for ``image`` (its tag), None when it has no such
    manifest or the reference names no registry; RegistryError when it cannot be asked."""
    ref = parse_image_ref(image)
    if ref.digest or not ref.registry:
        return ref.digest
    response = _manifest_head(image, login)
    digest = response.headers.get("Docker-Content-Digest", "")
    return digest if response.status_code == 200 and digest.startswith("sha256:") else None


def _manifest_head(image: str, login: RegistryCredential | None) -> Any:
    from mlship.image.credentials import credentials
    from mlship.image.registry import (
        ATTEMPTS,
        MANIFEST_TYPES,
        RegistryClient,
        TransientRegistryError,
        retrying,
    )

    ref = parse_image_ref(image)
    registry = ref.registry or ""  # the callers only ask references that name a registry
    client = RegistryClient(registry, credentials(registry, login))
    try:
        return retrying(client.get)(
            f"/v2/{ref.path}/manifests/{ref.digest or ref.tag or 'latest'}", method="HEAD",
            scope=f"repository:{ref.path}:pull", headers={"Accept": MANIFEST_TYPES})
    except TransientRegistryError as err:
        raise RegistryError(f"{err.message} (after {ATTEMPTS} attempts)",
                            hint="check the registry is up, or pass --skip-checks if the "
                                 "cluster reaches a registry this machine cannot") from None


# ---- GPU nodes ------------------------------------------------------------------------------


def check_gpu_nodes(cluster: Cluster, objects: list[dict[str, Any]],
                    cuda_image: str | None) -> Check:
    wanted = [(owner, pod_spec, name, quantity(value))
              for owner, pod_spec in pod_specs(objects)
              for container in pod_spec.get("containers") or []
              for name, value in ((container.get("resources") or {}).get("limits") or {}).items()
              if "/" in name]
    if not wanted:
        return Check("gpu", "skipped", "no GPU (extended resource) requested")
    nodes = readable(cluster, "v1", "Node", None)
    if nodes is None:
        return Check("gpu", "skipped", "cannot list nodes (forbidden): GPU nodes not checked")
    details, problems = [], []
    for owner, pod_spec, resource, count in wanted:
        offering = [n for n in nodes if quantity((n.get("status") or {}).get("allocatable", {})
                                           .get(resource, "0")) >= count]
        fitting = [n for n in offering if _admits(n, pod_spec)]
        if not fitting:
            selector = pod_spec.get("nodeSelector") or {}
            problems.append(PreflightError(
                f"{describe(owner)}: no schedulable node offers {resource} >= {shown(count)} "
                f"and admits the pod ({len(offering)} of {len(nodes)} nodes have enough "
                f"{resource}; nodeSelector {selector or 'none'})",
                hint="check gpu.node_selector and gpu.tolerations in mlship.yaml, and that "
                     "the NVIDIA device plugin runs on the GPU nodes"))
            continue
        try:
            details.append(f"{resource}: {len(fitting)} node(s) fit ({_names(fitting)})"
                           + _driver_check(owner, fitting, cuda_image))
        except PreflightError as err:
            problems.append(err)
    if problems:
        raise PreflightError("; ".join(err.message for err in problems), hint=problems[0].hint)
    return Check("gpu", "passed", "; ".join(details))


def _driver_check(owner: dict[str, Any], nodes: list[dict[str, Any]],
                  cuda_image: str | None) -> str:
    stack = cuda.cuda_stack_of(cuda_image) if cuda_image else None
    if stack is None:
        return "; CUDA version of the image unknown, drivers not checked"
    needed = (stack.cuda_major, stack.cuda_minor)
    driver_needed = cuda.min_driver(*needed)
    unlabelled, too_old, good = [], [], []
    for node in nodes:
        supports, driver = _node_cuda(node.get("metadata", {}).get("labels") or {})
        if supports is None:
            unlabelled.append(node["metadata"]["name"])
        elif supports >= needed:
            good.append(node["metadata"]["name"])
        else:
            too_old.append(f"{node['metadata']['name']} (driver {driver}, CUDA "
                           f"{supports[0]}.{supports[1]})")
    if not good and not unlabelled:
        at_least = f" (driver >= {cuda.format_driver(driver_needed)})" if driver_needed else ""
        raise PreflightError(
            f"{describe(owner)}: the image {cuda_image} needs CUDA {needed[0]}.{needed[1]}"
            f"{at_least}, but no GPU node's driver supports it: {', '.join(too_old)}",
            hint="upgrade the node driver (GPU Operator driver.version), or build on an older "
                 "CUDA base (image.base and gpu.onnxruntime_gpu_version); --skip-checks if "
                 "the nodes use CUDA forward compatibility")
    parts = [f"driver runs CUDA {needed[0]}.{needed[1]} on {', '.join(good)}"] * bool(good)
    parts += [f"no driver labels on {', '.join(unlabelled)}"] * bool(unlabelled)
    return "; " + "; ".join(parts)


def _node_cuda(labels: dict[str, str]) -> tuple[tuple[int, int] | None, str]:
    """(newest CUDA the node's driver runs, driver version) from feature-discovery labels."""
    driver = labels.get("nvidia.com/cuda.driver-version.full") or ".".join(
        labels[f"nvidia.com/cuda.driver.{part}"] for part in ("major", "minor", "rev")
        if labels.get(f"nvidia.com/cuda.driver.{part}"))
    for prefix in ("nvidia.com/cuda.runtime-version.", "nvidia.com/cuda.runtime."):
        major, minor = labels.get(f"{prefix}major"), labels.get(f"{prefix}minor")
        if major and minor and major.isdigit() and minor.isdigit():
            return (int(major), int(minor)), driver or "unknown"
    parsed = cuda.parse_driver_version(driver) if driver else None
    return (cuda.cuda_of_driver(parsed) if parsed else None), driver


def _admits(node: dict[str, Any], pod_spec: dict[str, Any]) -> bool:
    """Schedulable, labels match the nodeSelector, every NoSchedule/NoExecute taint tolerated."""
    spec, labels = node.get("spec") or {}, node.get("metadata", {}).get("labels") or {}
    if spec.get("unschedulable"):
        return False
    if any(labels.get(key) != value for key, value in (pod_spec.get("nodeSelector") or {}).items()):
        return False
    tolerations = pod_spec.get("tolerations") or []
    return all(any(_tolerates(toleration, taint) for toleration in tolerations)
               for taint in spec.get("taints") or []
               if taint.get("effect") in ("NoSchedule", "NoExecute"))


def _tolerates(toleration: dict[str, Any], taint: dict[str, Any]) -> bool:
    if toleration.get("effect") and toleration["effect"] != taint.get("effect"):
        return False
    if toleration.get("key") and toleration["key"] != taint.get("key"):
        return False
    if toleration.get("operator", "Equal") == "Exists":
        return True
    return bool(toleration.get("key")) and toleration.get("value", "") == taint.get("value", "")




def _names(nodes: list[dict[str, Any]], most: int = 3) -> str:
    names = [node["metadata"]["name"] for node in nodes]
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most
                                      else "")


