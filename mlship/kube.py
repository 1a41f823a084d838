"""The one door to a Kubernetes cluster: connect, apply, read, and turn API failures into lines.

Every stage that talks to a cluster (deploy, diff, rollout) goes through ``connect`` and the
``api_errors`` context, so "no kubeconfig", "unreachable", "forbidden by RBAC", "apply conflict"
and "unknown kind" read the same everywhere and carry the CLUSTER exit code. Objects are plain
dicts here on purpose: server-side apply sends exactly what render produced.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlship.errors import BadInputError, ClusterError

if TYPE_CHECKING:
    from kubernetes.client import ApiClient
    from kubernetes.dynamic import DynamicClient

FIELD_MANAGER = "mlship"
# How the API server names the other manager in a conflict's cause (its message).
_CONFLICT_WITH = re.compile(r'conflict with "([^"]+)"')
DEFAULT_KUBECONFIG = Path("~/.kube/config")


class ApplyConflictError(ClusterError):
    """Server-side apply found fields owned by another manager."""

    managers: frozenset[str] = frozenset()  # the field managers it conflicts with


class ForbiddenError(ClusterError):
    """RBAC (or an admission policy) refused the request."""


@dataclass
class Cluster:
    """A connected cluster: the typed API client plus a dynamic client for any kind."""

    api_client: ApiClient
    server: str
    context: str | None
    default_namespace: str | None
    _dynamic: DynamicClient | None = field(default=None, repr=False)

    @property
    def dynamic(self) -> DynamicClient:
        if self._dynamic is None:
            from kubernetes.dynamic import DynamicClient

            with api_errors(f"discovering the API of {self.server}"):
                self._dynamic = DynamicClient(self.api_client)
        return self._dynamic

    def resource(self, api_version: str, kind: str) -> Any:
        """The dynamic resource for ``kind``; a clear error when the cluster lacks it (a CRD)."""
        from kubernetes.dynamic.exceptions import ResourceNotFoundError

        try:
            with api_errors(f"looking up {kind}"):
                return self.dynamic.resources.get(api_version=api_version, kind=kind)
        except ResourceNotFoundError:
            raise ClusterError(
                f"the cluster at {self.server} does not serve {kind} ({api_version})",
                hint="install the CRD that defines it (Istio, Gateway API, Prometheus "
                     "Operator), or switch it off in mlship.yaml") from None

    def apply(self, obj: dict[str, Any], *, force: bool = False,
              dry_run: bool = False) -> dict[str, Any]:
        """Server-side apply ``obj`` as field manager ``mlship``; returns the live object."""
        resource = self.resource(obj["apiVersion"], obj["kind"])
        meta = obj["metadata"]
        with api_errors(f"applying {describe(obj)}"):
            result = self.dynamic.server_side_apply(
                resource, body=obj, name=meta["name"], namespace=meta.get("namespace"),
                field_manager=FIELD_MANAGER, force_conflicts=force,
                dry_run="All" if dry_run else None)
        live: dict[str, Any] = result.to_dict()
        return live

    def get(self, api_version: str, kind: str, name: str,
            namespace: str | None = None) -> dict[str, Any] | None:
        """The live object, or None when it does not exist."""
        from kubernetes.client.exceptions import ApiException

        resource = self.resource(api_version, kind)
        try:
            with api_errors(f"reading {kind} {name}", passthrough=(404,)):
                found: dict[str, Any] = resource.get(name=name, namespace=namespace).to_dict()
                return found
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def list(self, api_version: str, kind: str, namespace: str | None = None,
             label_selector: str | None = None) -> list[dict[str, Any]]:
        resource = self.resource(api_version, kind)
        with api_errors(f"listing {kind}"):
            found = resource.get(namespace=namespace, label_selector=label_selector)
        return [item.to_dict() for item in found.items]

    def patch(self, api_version: str, kind: str, name: str, namespace: str | None,
              patch: dict[str, Any], *, field_manager: str | None = None) -> dict[str, Any]:
        """A JSON merge patch, for small state changes (annotations, replicas, selectors);
        ``field_manager`` names who owns the changed fields (``mlship-rollout``)."""
        resource = self.resource(api_version, kind)
        with api_errors(f"updating {kind} {name}"):
            patched: dict[str, Any] = resource.patch(
                name=name, namespace=namespace, body=patch,
                content_type="application/merge-patch+json",
                field_manager=field_manager).to_dict()
        return patched

    def delete(self, api_version: str, kind: str, name: str,
               namespace: str | None = None) -> bool:
        """Delete; False when it was already gone."""
        from kubernetes.client.exceptions import ApiException

        resource = self.resource(api_version, kind)
        try:
            with api_errors(f"deleting {kind} {name}", passthrough=(404,)):
                resource.delete(name=name, namespace=namespace)
        except ApiException as err:
            if err.status == 404:
                return False
            raise
        return True


def match_labels(selector: dict[str, Any] | None) -> str:
    """The ``label_selector`` string of a workload's ``spec.selector`` (its matchLabels)."""
    labels = (selector or {}).get("matchLabels") or {}
    return ",".join(f"{key}={value}" for key, value in labels.items())


def describe(obj: dict[str, Any]) -> str:
    """``Deployment mlship/iris`` — how objects are named in every message."""
    meta = obj.get("metadata", {})
    where = f"{meta['namespace']}/" if meta.get("namespace") else ""
    return f"{obj.get('kind', '?')} {where}{meta.get('name', '?')}"


@dataclass(frozen=True)
class KubeconfigSource:
    """Where the kubeconfig comes from: one file (``--kubeconfig``) or KUBECONFIG's list.

    ``files`` are the existing files in KUBECONFIG order; the kubernetes client's loader
    merges them as kubectl does (the first file to name a cluster, context or user wins)."""

    files: tuple[Path, ...]
    label: str  # how messages name it: the path, or KUBECONFIG=a.yaml:b.yaml

    @property
    def config_file(self) -> str:
        """What the client's loader takes: the files joined with the path separator."""
        return os.pathsep.join(str(path) for path in self.files)

    def current_context(self) -> str | None:
        """kubectl's rule: the current-context of the first file that sets one. (The client's
        merger lets the last file win, so mlship passes this one explicitly.)"""
        import yaml

        for path in self.files:
            try:
                loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
            except (OSError, yaml.YAMLError):
                continue  # the loader itself reports an unreadable file
            if isinstance(loaded, dict) and loaded.get("current-context"):
                return str(loaded["current-context"])
        return None


def resolve_kubeconfig(kubeconfig: Path | None) -> KubeconfigSource | None:
    """The kubeconfig to use, None for in-cluster; ClusterError when there is none at all."""
    if kubeconfig is not None:
        path = kubeconfig.expanduser()
        if not path.is_file():
            raise ClusterError(f"{path}: no such kubeconfig file",
                               hint="pass --kubeconfig PATH or set KUBECONFIG")
        return KubeconfigSource((path,), str(path))
    from_env = os.environ.get("KUBECONFIG", "")
    listed = [Path(part).expanduser() for part in from_env.split(os.pathsep) if part]
    existing = tuple(path for path in listed if path.is_file())
    if existing:  # kubectl skips the listed files that do not exist
        label = str(existing[0]) if len(listed) == 1 else f"KUBECONFIG={from_env}"
        return KubeconfigSource(existing, label)
    if from_env:
        raise ClusterError(f"KUBECONFIG={from_env}: no such file",
                           hint="point KUBECONFIG at your cluster's kubeconfig")
    default = DEFAULT_KUBECONFIG.expanduser()
    if default.is_file():
        return KubeconfigSource((default,), str(default))
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        return None
    raise ClusterError("no kubeconfig: --kubeconfig not given, KUBECONFIG not set and "
                       f"{default} does not exist",
                       hint="pass --kubeconfig PATH, set KUBECONFIG, or run inside a cluster")


def connect(kubeconfig: Path | None = None, context: str | None = None, *,
            timeout: float = 10.0) -> Cluster:
    """Load credentials and check the API answers; ClusterError naming what is wrong."""
    import yaml
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    source = resolve_kubeconfig(kubeconfig)
    default_namespace: str | None = None
    try:
        if source is None:
            config.load_incluster_config()
            api_client = client.ApiClient()
            namespace_file = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
            if namespace_file.is_file():
                default_namespace = namespace_file.read_text().strip() or None
        else:
            chosen = context or source.current_context()
            api_client = config.new_client_from_config(config_file=source.config_file,
                                                       context=chosen)
            contexts, active = config.list_kube_config_contexts(config_file=source.config_file)
            chosen = chosen or (active or {}).get("name")
            by_name = {c["name"]: c for c in contexts}
            default_namespace = by_name.get(chosen, {}).get("context", {}).get("namespace")
            context = chosen
    except ConfigException as err:
        where = source.label if source else "in-cluster config"
        known = _context_names(source)
        hint = f"contexts in it: {', '.join(known)}" if known else "check the file"
        raise ClusterError(f"{where}: {err}", hint=hint) from None
    # What the client's loader raises on a file that is not YAML, not UTF-8 (a ValueError), or
    # not shaped like a kubeconfig (a list, a context that is a number).
    except (yaml.YAMLError, ValueError, TypeError, AttributeError, KeyError) as err:
        raise malformed_kubeconfig(source.label if source else None, err) from None
    server = api_client.configuration.host
    with api_errors(f"connecting to {server}"):
        client.VersionApi(api_client).get_code(_request_timeout=timeout)
    return Cluster(api_client=api_client, server=server, context=context,
                   default_namespace=default_namespace)


def malformed_kubeconfig(where: str | None, err: Exception) -> BadInputError:
    """A kubeconfig the client cannot read, as one line naming the file and what is wrong."""
    where = where or "in-cluster config"
    mark = getattr(err, "problem_mark", None)
    if mark is not None:
        problem = getattr(err, "problem", None) or "not valid YAML"
        what = f"line {mark.line + 1}, column {mark.column + 1}: not valid YAML: {problem}"
    elif isinstance(err, UnicodeDecodeError):
        what = "not UTF-8 text"
    else:
        reason = " ".join(str(err).split()) or type(err).__name__
        what = f"not a valid kubeconfig (clusters, contexts and users must be lists of " \
               f"mappings): {reason}"
    return BadInputError(f"{where}: {what}")


def _context_names(source: KubeconfigSource | None) -> list[str]:
    if source is None:
        return []
    from kubernetes import config

    try:
        return [c["name"] for c in config.list_kube_config_contexts(source.config_file)[0]]
    except Exception:  # only for a hint; the caller reports the real problem
        return []


@contextlib.contextmanager
def api_errors(action: str, *, passthrough: tuple[int, ...] = ()) -> Iterator[None]:
    """Turn API and transport failures during ``action`` into one ClusterError line."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        yield
    except ApiException as err:
        if err.status in passthrough:
            raise
        raise _from_api_exception(action, err) from None
    except HTTPError as err:
        reason = getattr(err, "reason", None) or err
        raise ClusterError(f"{action}: cannot reach the Kubernetes API: {reason}",
                           hint="check the cluster is up and --context/--kubeconfig point "
                                "at it") from None


def _from_api_exception(action: str, err: Any) -> ClusterError:
    status = int(getattr(err, "status", 0) or 0)
    message, causes = _status_message(getattr(err, "body", None) or "")
    message = message or str(getattr(err, "reason", "") or err)
    if status == 401:
        return ClusterError(f"{action}: unauthorized (401): the credentials were rejected",
                            hint="refresh the credentials in your kubeconfig")
    if status == 403:
        hint = ("the namespace's Pod Security level refuses this pod"
                if "PodSecurity" in message else
                "ask a cluster admin for a Role granting this verb, or use another --context")
        return ForbiddenError(f"{action}: forbidden: {message}", hint=hint)
    if status == 409 and causes:
        fields = ", ".join(causes)
        conflict = ApplyConflictError(
            f"{action}: conflict: {fields}",
            hint="another field manager owns these fields; rerun with --force-conflicts to "
                 "take them over")
        conflict.managers = frozenset(_CONFLICT_WITH.findall(" ".join(causes)))
        return conflict
    if status == 422:
        # An admission policy of the cluster, not the object's schema, may be what refused it.
        policy = "AdmissionPolicy" in message or "admission webhook" in message
        return ClusterError(f"{action}: rejected as invalid: {message}",
                            hint="a policy of the cluster refused it: ask its owners, or change "
                                 "mlship.yaml to comply" if policy else
                                 "fix mlship.yaml and render again")
    return ClusterError(f"{action}: HTTP {status}: {message}")


def _status_message(body: str | bytes) -> tuple[str, list[str]]:
    """The Status object's message and its per-field causes."""
    try:
        status = json.loads(body)
    except (TypeError, ValueError):
        return (body.decode() if isinstance(body, bytes) else str(body)).strip(), []
    if not isinstance(status, dict):
        return str(status), []
    causes = [" ".join(part for part in (cause.get("field", ""), cause.get("message", ""))
                       if part)
              for cause in (status.get("details") or {}).get("causes") or []]
    return str(status.get("message", "")).strip(), [c for c in causes if c]
