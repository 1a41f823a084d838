"""The shadow's objects, made from a rendered app: kept out of every Service of the app, and
the app's NetworkPolicy opened exactly for the mirror's path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from mlship.render.traffic import TRACK_LABEL
from mlship.rollout.shadow_ops import (
    mirroring_env,
    network_policies,
    shadow_env_names,
    shadow_objects,
)


def _rendered(tmp_path: Path, model: Path) -> dict[str, dict[str, Any]]:
    from mlship.config.load import load_config
    from mlship.model.inspect import inspect_model
    from mlship.render.bundle import render

    (tmp_path / "mlship.yaml").write_text(yaml.safe_dump({
        "name": "iris", "model": {"source": str(model)}, "replicas": 2,
        "rollout": {"traffic": "istio"}}))
    config = load_config(tmp_path / "mlship.yaml")
    bundle = render(config, inspect_model(model))
    found = {}
    for path, text in bundle.files.items():
        if path.startswith("k8s/") and not path.endswith("kustomization.yaml"):
            for document in yaml.safe_load_all(text):
                if document:
                    found[f"{document['kind']}/{document['metadata']['name']}"] = document
    return found


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def test_shadow_pods_are_outside_every_service_and_policy_of_the_app(tmp_path, iris_model):
    objects = _rendered(tmp_path, iris_model)
    stable, service = objects["Deployment/iris"], objects["Service/iris"]
    stable["spec"]["template"]["spec"]["containers"][0]["env"] = [
        *stable["spec"]["template"]["spec"]["containers"][0].get("env", []),
        {"name": shadow_env_names()[0], "value": "http://old"}]
    deployment, shadow_service = shadow_objects(stable, service, "reg/iris:v2", "rev")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pod_labels[TRACK_LABEL] == "shadow"
    for key, obj in objects.items():
        if key.startswith("Service/"):  # iris, iris-stable, iris-canary
            assert not _selects(obj["spec"]["selector"], pod_labels), key
    assert _selects(shadow_service["spec"]["selector"], pod_labels)
    assert _selects(deployment["spec"]["selector"]["matchLabels"], pod_labels)
    assert shadow_service["spec"]["ports"] == service["spec"]["ports"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "reg/iris:v2"
    assert not {item["name"] for item in container["env"]} & set(shadow_env_names())

    policy = objects["NetworkPolicy/iris"]
    app_pods = policy["spec"]["podSelector"]
    assert not _selects(app_pods["matchLabels"], pod_labels)  # hence a policy of its own
    mirror, own = network_policies(policy, deployment, service)
    target = [{"protocol": "TCP", "port": port["targetPort"]}
              for port in service["spec"]["ports"]]
    assert mirror["spec"] == {"podSelector": app_pods, "policyTypes": ["Egress"], "egress": [
        {"to": [{"podSelector": {"matchLabels": deployment["spec"]["selector"]["matchLabels"]}}],
         "ports": target}]}
    assert own["spec"]["ingress"] == [{"from": [{"podSelector": app_pods}], "ports": target}]
    assert own["spec"]["egress"] == policy["spec"]["egress"]
    assert _selects(own["spec"]["podSelector"]["matchLabels"], pod_labels)
    assert network_policies(None, deployment, service) == []


def test_mirroring_env_is_what_the_runtime_parses() -> None:
    from mlship_runtime.compare import Tolerance, Tolerances
    from mlship_runtime.options import from_env

    tolerances = Tolerances(Tolerance(relative=0.05), {"y": Tolerance("exact")})
    env = {item["name"]: item["value"] for item in
           mirroring_env("http://iris-shadow.ns.svc:80", 0.5, 20, tolerances)}
    parsed = from_env(env)
    assert parsed["shadow_url"] == "http://iris-shadow.ns.svc:80"
    assert (parsed["shadow_sample_rate"], parsed["shadow_max_per_second"]) == (0.5, 20.0)
    assert Tolerances.from_json(parsed["shadow_tolerances"]) == tolerances
