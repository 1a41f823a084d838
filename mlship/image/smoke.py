"""``mlship build --smoke``: run the built image the way Kubernetes will, and make it answer.

The container gets the restricted posture the rendered Deployment asks for (non-root, read-only
root filesystem with a tmpfs /tmp, every capability dropped, no-new-privileges) on the host
network at a free loopback port. It must become ready, answer one V2 inference generated from
each model's own signature with what in-process onnxruntime computes (every model and
pipeline of a multi-model image), and exit 0 on SIGTERM.
A failure is a DockerError (exit 4) carrying the container's last log lines. The Docker client
comes from ``mlship.image.build``; its errors map in ``docker_errors``.
"""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlship.errors import DockerError
from mlship.image.engine import docker_errors

if TYPE_CHECKING:
    from collections.abc import Mapping

    import docker

    from mlship.serving.client import RuntimeClient

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def run_restricted(client: docker.DockerClient, image: str, port: int, *,
                   user: str = "10001:10001") -> Any:
    """Start ``image`` hardened like the Deployment, serving on 127.0.0.1:``port``."""
    with docker_errors(f"starting {image}"):
        return client.containers.run(
            image, detach=True, network_mode="host", user=user, read_only=True,
            tmpfs={"/tmp": "rw,size=64m,mode=1777"}, cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            environment={"MLSHIP_RUNTIME_PORT": str(port), "MLSHIP_RUNTIME_HOST": "127.0.0.1"})


def smoke_test(client: docker.DockerClient, image: str, models: Mapping[str, Path], *,
               ready_timeout_s: float = READY_TIMEOUT_S) -> dict[str, Any]:
    """Serve, infer, compare with onnxruntime here, stop with SIGTERM; the figures measured.

    ``models`` maps each served model's name to its file here, the main model first. Every
    model and pipeline the image serves answers one request; models are compared with
    onnxruntime in this process, pipelines must return every output they declare."""
    from mlship.serving.client import RuntimeClient

    port = free_port()
    started = time.monotonic()
    container = run_restricted(client, image, port)
    try:
        runtime = RuntimeClient(f"http://127.0.0.1:{port}", timeout_s=10)
        if not runtime.wait_ready(ready_timeout_s):
            raise DockerError(f"smoke test: {image} did not become ready on port {port} within "
                              f"{ready_timeout_s:.0f} s{_logs(container)}")
        ready_s = time.monotonic() - started
        loads = load_seconds(runtime.metrics_text())
        names = runtime.served_names()
        if len(names) == 1 and len(models) == 1:  # one model, whatever name it serves under
            models = {names[0]: next(iter(models.values()))}
        served = [{"name": name, "outputs": _answer(runtime, image, name, models.get(name))}
                  for name in names]
        with docker_errors("stopping the smoke-test container"):
            container.stop(timeout=STOP_TIMEOUT_S)  # SIGTERM first: the runtime drains
            exit_code = int(container.wait(timeout=STOP_TIMEOUT_S)["StatusCode"])
        if exit_code != 0:
            raise DockerError(f"smoke test: {image} exited {exit_code} on SIGTERM, not 0"
                              f"{_logs(container)}")
        main = next((entry for entry in served if entry["name"] in models), served[0])
        result = {"passed": True, "ready_s": round(ready_s, 2), "model": main["name"],
                  "outputs": main["outputs"], "exit_code": exit_code,
                  "load_s": round(sum(loads.values()), 3),
                  "models_load_s": {name: round(value, 3) for name, value in loads.items()}}
        if len(served) > 1:
            result["served"] = served
        return result
    finally:
        with docker_errors("removing the smoke-test container"):
            container.remove(force=True)


def load_seconds(exposition: str) -> dict[str, float]:
    """Each model's ``mlship_model_load_seconds`` (the longest, when workers each report)."""
    loads: dict[str, float] = {}
    for line in exposition.splitlines():
        if not line.startswith("mlship_model_load_seconds{"):
            continue
        labels, _, value = line.rpartition(" ")
        match = re.search(r'(?:\{|,)model="((?:[^"\\]|\\.)*)"', labels)
        if match is not None:
            loads[match[1]] = max(loads.get(match[1], 0.0), float(value))
    return loads


def _answer(runtime: RuntimeClient, image: str, name: str, local: Path | None) -> list[str]:
    """One inference of ``name`` from its own signature; checked against ``local`` when it is a
    model file here, else (a pipeline) for every declared output. The output names."""
    import numpy as np
    import onnxruntime as ort

    from mlship.model.inputs import generated_inputs

    metadata = runtime.metadata(name)
    inputs = generated_inputs(metadata)  # at the profile the image's runtime warmed up at
    answer = runtime.infer(name, inputs).outputs
    if local is None:
        missing = sorted({o["name"] for o in metadata["outputs"]} - set(answer))
        if missing:
            raise DockerError(f"smoke test: {name!r} in {image} did not return {missing}")
        return sorted(answer)
    options = ort.SessionOptions()
    # onnxruntime's own lines are coloured whatever NO_COLOR or a pipe say, and repeat what
    # an exception carries anyway: this reference run keeps them out of build's output.
    options.log_severity_level = 3
    session = ort.InferenceSession(str(local), options, providers=["CPUExecutionProvider"])
    expected = dict(zip([o.name for o in session.get_outputs()], session.run(None, inputs),
                        strict=True))
    for output, value in expected.items():
        if not isinstance(value, np.ndarray):  # sequences of maps: compared by the runtime
            continue
        if not np.allclose(np.asarray(answer[output], dtype=value.dtype), value,
                           rtol=1e-5, atol=1e-6):
            raise DockerError(f"smoke test: output {output!r} of {name!r} in {image} differs "
                              f"from onnxruntime in-process: {answer[output]!r} != {value!r}")
    return sorted(expected)


def _logs(container: Any) -> str:
    try:
        lines = container.logs(tail=8).decode(errors="replace").strip().splitlines()
    except Exception:  # logs are a courtesy; the real error is raised anyway
        return ""
    return "; last log lines:\n" + "\n".join(lines) if lines else ""
