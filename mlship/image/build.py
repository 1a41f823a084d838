"""Build context assembly, the Docker SDK build, and the image's size by layer.

The context holds exactly what the Dockerfile copies (``docs/rendering.md``): the rendered
Dockerfile and ``.dockerignore``, ``requirements.lock`` (the committed runtime lock plus the
host-built runtime wheel's hash; ``requirements-gpu.lock`` for a CUDA image, from the GPU lock),
``wheels/`` from the cached wheelhouse, and ``model/``. The
build runs through docker-py's low-level API with host networking (no bridge exists on our CI
and nothing is fetched inside the build), never pulls, and reports each step as an event so
the CLI can draw it. Every docker-py exception becomes an ``MlshipError`` in ``docker_errors``,
the one mapping shared with ``mlship.image.push``.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlship.errors import DockerError, SizeBudgetError
from mlship.image.engine import docker_errors

if TYPE_CHECKING:
    import docker

    from mlship.config.cuda import GpuRelease
    from mlship.render.bundle import Bundle

MB = 1000 * 1000
_STEP = re.compile(r"^Step (\d+)/(\d+) : (.*)$")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# Builder chatter, not the step's own output: left out of the failure report.
_CHATTER = re.compile(r"^\s*(---> |Removing intermediate container )")
_TAIL_LINES = 12
BuildEvent = Callable[[str, dict[str, Any]], None]


@dataclass
class Layer:
    id: str
    created_by: str
    size_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "created_by": self.created_by, "size_bytes": self.size_bytes}


@dataclass
class BuildResult:
    image_id: str
    tags: list[str]
    base_image: str
    size_bytes: int = 0
    base_size_bytes: int = 0
    layers: list[Layer] = field(default_factory=list)
    lock_hash: str = ""
    steps: int = 0
    cached_steps: int = 0
    duration_s: float = 0.0

    @property
    def added_bytes(self) -> int:
        return self.size_bytes - self.base_size_bytes

    def biggest_layers(self, count: int = 3) -> list[Layer]:
        return sorted(self.layers, key=lambda layer: layer.size_bytes, reverse=True)[:count]


def git_revision(directory: Path) -> str | None:
    """The full commit sha of the repository holding ``directory``, or None outside git."""
    try:
        result = subprocess.run(["git", "-C", str(directory), "rev-parse", "HEAD"],
                                capture_output=True, text=True, check=False, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    sha = result.stdout.strip()
    return sha if result.returncode == 0 and re.fullmatch(r"[0-9a-f]{40}", sha) else None


def assemble_context(bundle: Bundle, out_dir: Path) -> str:
    """Write the build context of a rendered ``bundle`` into ``out_dir`` (replacing it): its
    Dockerfile and .dockerignore, wheels/ and the lock (requirements.lock, or
    requirements-gpu.lock for a CUDA image), and the files it bakes (the models and their
    external data). Returns the lock's sha256."""
    from mlship.render.bundle import write_bundle

    if out_dir.exists():
        shutil.rmtree(out_dir)
    write_bundle(bundle.only("Dockerfile", ".dockerignore"), out_dir)
    complete_context(out_dir, bundle.gpu_release)
    for baked in bundle.baked:
        _link_or_copy(baked.source, out_dir / baked.target)
    return lock_hash_of(out_dir)


def complete_context(context: Path, gpu_release: GpuRelease | None = None) -> None:
    """Add wheels/ and the image's lock (runtime wheel hash included) when missing: the CPU
    lock, or for a CUDA image the GPU lock's shared pins with the chosen onnxruntime-gpu."""
    from mlship_runtime.manifest import sha256_file

    from mlship.config.cuda import GPU_PYTHON
    from mlship.image.wheelhouse import ensure_wheelhouse, image_pins, runtime_wheel

    lock = context / lock_name(gpu_release)
    if lock.is_file() and (context / "wheels").is_dir():
        return
    wheels = context / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    pins = image_pins(gpu_release)
    if gpu_release is None:
        wheelhouse, _ = ensure_wheelhouse()  # keyed by the committed lock, as CI caches it
    else:
        lock.write_text("".join(pin.line() + "\n" for pin in pins), encoding="utf-8")
        wheelhouse, _ = ensure_wheelhouse(lock, python=GPU_PYTHON)
    for wheel in sorted(wheelhouse.glob("*.whl")):
        _link_or_copy(wheel, wheels / wheel.name)
    runtime = runtime_wheel(wheels)
    version = runtime.name.split("-")[1]
    lines = [pin.line() for pin in pins]
    lines.append(f"mlship-runtime=={version} --hash=sha256:{sha256_file(runtime)}")
    lock.write_text("\n".join(lines) + "\n", encoding="utf-8")


def lock_name(gpu_release: GpuRelease | None) -> str:
    """The lock's name in the build context (the Dockerfile copies it by this name)."""
    return "requirements-gpu.lock" if gpu_release is not None else "requirements.lock"


def lock_hash_of(context: Path) -> str:
    from mlship_runtime.manifest import sha256_file

    gpu = context / "requirements-gpu.lock"
    return sha256_file(gpu if gpu.is_file() else context / "requirements.lock")


def _link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)  # same filesystem: free, and Docker hashes content anyway
    except OSError:
        shutil.copy2(source, target)


def check_base_image(client: docker.DockerClient, base: str) -> Any:
    """The base image from the local engine; mlship never pulls during a build."""
    import docker.errors

    with docker_errors("checking the base image"):
        try:
            return client.images.get(base)
        except docker.errors.ImageNotFound:
            raise DockerError(
                f"base image {base} is not in the local Docker engine, and mlship does not pull "
                "during builds",
                hint="`docker pull`/`docker load`/`docker import` it where a registry is "
                     "reachable, or set image.base in mlship.yaml to an image you have") from None


def base_digest(client: docker.DockerClient, base: str) -> str | None:
    """The registry digest of the local base image (``RepoDigests``, present once the image
    was pulled from or pushed to a registry), for the reference ``base`` names; None for an
    image made locally, or when the engine does not have it."""
    import docker.errors

    if "@" in base:
        return None
    name = base.rsplit(":", 1)[0] if ":" in base.rsplit("/", 1)[-1] else base
    with docker_errors("checking the base image"):
        try:
            image = client.images.get(base)
        except docker.errors.ImageNotFound:
            return None
    names = {name, f"docker.io/{name}", f"docker.io/library/{name}"}
    for repo_digest in image.attrs.get("RepoDigests") or []:
        repository, _, digest = str(repo_digest).partition("@")
        if repository in names and re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
            return digest
    return None


def build_image(client: docker.DockerClient, context: Path, *, base: str, tags: list[str],
                lock_hash: str, revision: str | None, no_cache: bool = False,
                on_event: BuildEvent | None = None) -> BuildResult:
    """Build ``context`` with host networking; DockerError naming the failing step."""
    emit = on_event or (lambda kind, data: None)
    base_image = check_base_image(client, base)
    started = time.monotonic()
    result = BuildResult(image_id="", tags=tags, base_image=base, lock_hash=lock_hash)
    buildargs = {"REVISION": revision or "unknown", "RUNTIME_LOCK": lock_hash,
                 "CREATED": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    step, tail = "", list[str]()
    with docker_errors("building the image"):
        stream = client.api.build(path=str(context), tag=tags[0], decode=True, rm=True,
                                  forcerm=True, pull=False, nocache=no_cache,
                                  network_mode="host", buildargs=buildargs)
        for event in stream:
            if "error" in event or "errorDetail" in event:
                detail = event.get("errorDetail", {}).get("message") or event.get("error")
                output = "\n".join(tail[-_TAIL_LINES:])
                raise DockerError(f"build failed at {step or 'the start'}: {detail}"
                                  + (f"\n{output}" if output else ""),
                                  hint="fix the step above; the full log is in --debug output")
            if "aux" in event and "ID" in event["aux"]:
                result.image_id = event["aux"]["ID"]
            for line in _ANSI.sub("", str(event.get("stream", ""))).splitlines():
                match = _STEP.match(line)
                if match:
                    step, tail = f"step {match[1]}/{match[2]}: {match[3]}", []
                    result.steps = int(match[2])
                    emit("step", {"index": int(match[1]), "total": int(match[2]),
                                  "instruction": match[3]})
                elif line.strip() == "---> Using cache":
                    result.cached_steps += 1
                    emit("cached", {"step": step})
                elif line.strip():
                    if not _CHATTER.match(line):
                        tail.append(line)
                    emit("output", {"line": line})
        if not result.image_id:
            raise DockerError("build finished without an image id", hint="\n".join(tail[-5:]))
        image = client.images.get(result.image_id)
        for tag in tags[1:]:
            repository, _, name = tag.rpartition(":")
            image.tag(repository, name)
        _measure(client, result, image.attrs, base_image.attrs)
    result.duration_s = time.monotonic() - started
    return result


def _measure(client: docker.DockerClient, result: BuildResult, image: dict[str, Any],
             base: dict[str, Any]) -> None:
    result.size_bytes = int(image.get("Size") or 0)
    result.base_size_bytes = int(base.get("Size") or 0)
    history = client.api.history(result.image_id)  # newest first
    base_layers = len(client.api.history(base["Id"]))
    for entry in history[: max(0, len(history) - base_layers)]:
        created_by = re.sub(r"^/bin/sh -c (#\(nop\) )?", "", entry.get("CreatedBy", "")).strip()
        # The classic builder writes "COPY dir:<sha256> in /opt/venv": the path is the news.
        created_by = re.sub(r"\b(dir|file|multi):[0-9a-f]{64} in ", "", created_by)
        result.layers.append(Layer(entry.get("Id", "<missing>"), created_by[:120],
                                   int(entry.get("Size") or 0)))


def check_budget(result: BuildResult, budget_mb: int) -> None:
    """SizeBudgetError when the image adds more than ``budget_mb`` MB over its base."""
    if result.added_bytes <= budget_mb * MB:
        return
    biggest = "; ".join(f"{layer.size_bytes / MB:.1f} MB {layer.created_by[:60]}"
                        for layer in result.biggest_layers())
    raise SizeBudgetError(
        f"image {result.tags[0]} adds {result.added_bytes / MB:.1f} MB over its base "
        f"{result.base_image}, over the budget of {budget_mb} MB; biggest layers: {biggest}",
        hint="trim the model or dependencies, or raise image.size_budget_mb in mlship.yaml")


def add_labels(client: docker.DockerClient, result: BuildResult,
               labels: dict[str, str]) -> None:
    """Put ``labels`` on the built image (what only running it can tell, such as the load time
    the smoke test measured): a metadata-only build ``FROM`` it, no layer added, every tag
    moved to it; ``result.image_id`` becomes the labelled image, the one pushed."""
    # JSON strings are valid Dockerfile LABEL values: quoted, with escapes Docker understands.
    lines = [f"FROM {result.image_id}"] + [f"LABEL {key}={json.dumps(value)}"
                                           for key, value in sorted(labels.items())]
    with docker_errors("labelling the image"):
        stream = client.api.build(fileobj=io.BytesIO("\n".join(lines).encode()),
                                  tag=result.tags[0], decode=True, rm=True, forcerm=True,
                                  pull=False, network_mode="host")
        image_id = ""
        for event in stream:
            if "error" in event or "errorDetail" in event:
                detail = event.get("errorDetail", {}).get("message") or event.get("error")
                raise DockerError(f"labelling the image failed: {detail}")
            if "aux" in event and "ID" in event["aux"]:
                image_id = event["aux"]["ID"]
        if not image_id:
            raise DockerError("labelling the image finished without an image id")
        image = client.images.get(image_id)
        for tag in result.tags[1:]:
            repository, _, name = tag.rpartition(":")
            image.tag(repository, name)
    result.image_id = image_id
