"""`mlship build` and `mlship push`: from mlship.yaml to an image in a registry, verified.

Progress goes to stderr: a live status line when stderr is a terminal, one plain line per
build step otherwise; `--json` prints one final document on stdout. docker-py is imported only
inside the commands (through mlship.image) so `mlship --help` stays light.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from mlship.cli import output
from mlship.cli import registry_login as login_opts
from mlship.errors import BadInputError

if TYPE_CHECKING:
    from rich.console import Console

    from mlship.config.cuda import GpuRelease
    from mlship.config.schema import MlshipConfig
    from mlship.image.build import BuildResult
    from mlship.image.credentials import RegistryCredential
    from mlship.render.bundle import Bundle

_JSON_HELP = "Print one JSON object on stdout."
LOAD_LABEL = "dev.mlship.load-seconds"  # the image's measured model load + warm-up time
RECORD_TOLERANCE = 0.10


class _Progress(output.LiveDisplay):
    """Build events -> stderr: a Rich status line on a terminal, plain lines otherwise."""

    def __init__(self, console: Console, live: bool) -> None:
        self.status = console.status("starting the build") if live else None
        super().__init__(console, self.status)
        self.current = ""

    def __call__(self, kind: str, data: dict[str, Any]) -> None:
        from rich.markup import escape

        if kind == "step":
            self.current = f"step {data['index']}/{data['total']}: {data['instruction'][:90]}"
            if self.status is not None:
                self.status.update(escape(self.current))
            self.console.print(escape(self.current), soft_wrap=True)
        elif kind == "cached":
            self.console.print("  [dim]cached[/dim]")
        elif kind == "output" and output.state.debug:
            self.console.print(f"  [dim]{escape(data['line'])}[/dim]", soft_wrap=True)


def build(
    config: Path = typer.Option(Path("mlship.yaml"), "--config", "-c", help="Path of mlship.yaml."),
    build_dir: Path | None = typer.Option(None, "--build-dir", show_default=False,
                                          help="Build this already assembled build folder (a "
                                               "Dockerfile, wheels/ and the lock) instead of "
                                               "assembling one in mlship-out/build."),
    legacy_context: Path | None = typer.Option(None, "--context", hidden=True,
                                               show_default=False,
                                               help="Deprecated spelling of --build-dir."),
    tag: list[str] = typer.Option([], "--tag", "-t", help="Tag (or full reference) to apply "
                                  "instead of the config's and git's; repeatable."),
    push: bool = typer.Option(False, "--push", help="Push every tag and verify its digest."),
    smoke: bool = typer.Option(False, "--smoke", help="Run the image hardened and check one "
                               "inference against onnxruntime here."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Do not reuse cached layers."),
    no_record: bool = typer.Option(False, "--no-record", help="With --smoke: do not write the "
                                   "measured load time into mlship.yaml (model.load_seconds); "
                                   "the image label and --json still carry it."),
    context_only: Path | None = typer.Option(
        None, "--context-only", metavar="DIR", show_default=False,
        help="Only write the complete build context (Dockerfile, wheels/, the lock, model/) "
             "into DIR, for docker build, buildctl, kaniko or buildah; no Docker engine needed."),
    registry_username: str | None = login_opts.USERNAME,
    registry_password_stdin: bool = login_opts.PASSWORD_STDIN,
    registry_auth: str | None = login_opts.REMOVED_AUTH,
    json_output: bool = typer.Option(False, "--json", callback=output.set_json_mode,
                                     help=_JSON_HELP),
) -> None:
    """Build the serving image from mlship.yaml (offline, from the locked wheelhouse)."""
    from mlship.config.load import load_config
    from mlship.image import build as builder
    from mlship.image.engine import docker_client
    from mlship.model.signatures import model_signatures
    from mlship.render.bundle import render

    started = time.monotonic()
    login = login_opts.registry_login(registry_username, registry_password_stdin, registry_auth)
    context = _build_dir(build_dir, legacy_context)
    loaded = load_config(config)
    signature, extras = model_signatures(loaded, config, warn=output.warn)
    bundle = render(loaded, signature, extras=extras)
    pinned = _pinned_base(loaded.base_image, required=context_only is None)
    if pinned:
        bundle = render(loaded, signature, extras=extras, base_digest=pinned)
    if context_only is not None:
        _write_context_only(bundle, context_only, conflicts={
            "--build-dir": context is not None, "--push": push, "--smoke": smoke,
            "--tag": bool(tag), "--no-cache": no_cache, "--json": json_output})
        return
    client = docker_client()  # fail fast when the engine is unreachable
    if context is None:
        context = config.parent / "mlship-out" / "build"
        output.info(f"assembling the build context in {context}")
        lock_hash = builder.assemble_context(bundle, context)
    else:
        lock_hash = _existing_context(context, bundle.gpu_release)
    revision = builder.git_revision(config.parent.resolve())
    tags = bundle.identity.tags(revision, tag)
    console = output.stderr_console()
    with _Progress(console, live=output.color_enabled()) as progress:
        result = builder.build_image(client, context, base=_base_of(context), tags=tags,
                                     lock_hash=lock_hash, revision=revision,
                                     no_cache=no_cache, on_event=progress)
    _report(result)
    builder.check_budget(result, loaded.image.size_budget_mb)
    payload = _payload(result, loaded.image.size_budget_mb)
    if smoke:
        payload["smoke"] = _smoke(client, result, config, loaded, bundle, signature, extras,
                                  record=not no_record)
        payload["image_id"] = result.image_id
    if push:
        payload["pushed"] = _push_all(client, result.tags, login)
        payload["digest"] = payload["pushed"][0]["digest"]
    payload["duration_s"] = round(time.monotonic() - started, 2)
    if json_output:
        output.emit_json("build", payload)


def _smoke(client: Any, result: Any, config: Path, loaded: MlshipConfig, bundle: Any,
           signature: Any, extras: dict[str, Any], *, record: bool) -> dict[str, Any]:
    """The built image run hardened and answered (``--smoke``); its measured load time goes
    on the image as a label and, unless ``record`` is off, into mlship.yaml."""
    if signature is None:
        raise BadInputError("--smoke needs a model baked into the image (a local "
                            "model.source)")
    from mlship.image import build as builder
    from mlship.image.smoke import smoke_test

    local = {loaded.name: Path(signature.path),
             **{name: Path(extra.path) for name, extra in extras.items()}}
    smoked: dict[str, Any] = smoke_test(client, result.tags[0], local,
                                        ready_timeout_s=_startup_window(bundle))
    _say(f"smoke test passed: ready in {smoked['ready_s']} s (model load and warm-up "
         f"{smoked['load_s']} s), inference matches onnxruntime, exit 0 on SIGTERM")
    smoked["recorded"] = []
    if not smoked["models_load_s"]:  # a runtime without mlship_model_load_seconds
        output.warn(f"smoke test: {result.tags[0]} reports no mlship_model_load_seconds; "
                    "the startup probe stays sized from the model size")
    else:
        builder.add_labels(client, result, {LOAD_LABEL: f"{smoked['load_s']:.3f}"})
        if record:
            smoked["recorded"] = _record_loads(config, loaded, smoked["models_load_s"])
    return smoked


def push(
    image: str | None = typer.Argument(None, help="registry/repository:tag (default: the "
                                       "config's tags).", show_default=False),
    config: Path = typer.Option(Path("mlship.yaml"), "--config", "-c", help="Path of mlship.yaml."),
    registry_username: str | None = login_opts.USERNAME,
    registry_password_stdin: bool = login_opts.PASSWORD_STDIN,
    registry_auth: str | None = login_opts.REMOVED_AUTH,
    json_output: bool = typer.Option(False, "--json", callback=output.set_json_mode,
                                     help=_JSON_HELP),
) -> None:
    """Push an image, fail on any error in the push stream, and verify its digest."""
    from mlship.image import build as builder
    from mlship.image.engine import docker_client

    login = login_opts.registry_login(registry_username, registry_password_stdin, registry_auth)
    if image is None:
        from mlship.config.load import load_config
        from mlship.model.signatures import model_signatures
        from mlship.render.identity import image_identity, served_facts

        loaded = load_config(config)
        facts = served_facts(loaded, *model_signatures(loaded, config, warn=output.warn))
        images = image_identity(loaded, facts).tags(builder.git_revision(config.parent.resolve()))
    else:
        images = [image]
    client = docker_client()
    pushed = _push_all(client, images, login)
    if json_output:
        output.emit_json("push", {"pushed": pushed, "digest": pushed[0]["digest"]})


def _push_all(client: Any, images: list[str],
              login: RegistryCredential | None) -> list[dict[str, str]]:
    from mlship.image.push import push_image

    pushed = []
    for image in images:
        output.info(f"pushing {image}")
        digest = push_image(client, image, login=login)
        _say(f"pushed {image} (verified in the registry: {digest})")
        pushed.append({"image": image, "digest": digest})
    return pushed


def _pinned_base(base: str, *, required: bool) -> str | None:
    """The base's registry digest from the local engine, to pin FROM by; --context-only
    needs no engine, so there an unreachable one only leaves the tag."""
    from mlship.errors import MlshipError
    from mlship.image import build as builder
    from mlship.image.engine import docker_client

    try:
        digest = builder.base_digest(docker_client(), base)
    except MlshipError:
        if required:
            raise
        return None
    if digest:
        _say(f"base image pinned: FROM {base}@{digest}")
    return digest


def _write_context_only(bundle: Bundle, directory: Path, conflicts: dict[str, bool]) -> None:
    """The build context alone: what `docker build DIR` (or any builder) turns into the image
    `mlship build` makes, layer for layer; the labels' build args are printed to pass on."""
    from mlship.image import build as builder

    given = [flag for flag, on in conflicts.items() if on]
    if given:
        raise BadInputError(f"--context-only: cannot be combined with {', '.join(given)}",
                            hint="write the context, then build it with any builder, or "
                                 "`mlship build --build-dir DIR`")
    if directory.exists() and any(directory.iterdir()) and not (directory / "Dockerfile").is_file():
        raise BadInputError(f"--context-only {directory}: not empty and not a build context; "
                            "not overwritten", hint="name a new or empty folder")
    lock_hash = builder.assemble_context(bundle, directory)
    _say(f"wrote the build context to {directory}/ (base {bundle.base_image})")
    _say(f"build it with: docker build --build-arg RUNTIME_LOCK={lock_hash} {directory}")


def _build_dir(build_dir: Path | None, legacy_context: Path | None) -> Path | None:
    """``--build-dir``, or the old ``--context`` spelling, which every other command (and
    docker, kubectl) uses for a context of another kind: kept working, with a note."""
    if legacy_context is None:
        return build_dir
    if build_dir is not None and build_dir != legacy_context:
        raise BadInputError("--context and --build-dir name different build folders",
                            hint="use --build-dir alone")
    output.warn("--context is deprecated for the build folder (elsewhere it names a kube or "
                "Docker context): use --build-dir")
    return legacy_context


def _existing_context(context: Path, gpu_release: GpuRelease | None) -> str:
    from mlship.image import build as builder

    if not (context / "Dockerfile").is_file():
        raise BadInputError(f"--build-dir {context}: no Dockerfile there",
                            hint="run `mlship render`, or drop --build-dir to assemble one")
    if not (context / builder.lock_name(gpu_release)).is_file():
        builder.complete_context(context, gpu_release)
    return builder.lock_hash_of(context)


def _base_of(context: Path) -> str:
    """The image the Dockerfile starts from: what must exist locally."""
    for line in (context / "Dockerfile").read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].upper() == "FROM":
            return parts[1]
    raise BadInputError(f"{context / 'Dockerfile'}: no FROM line")


def _startup_window(bundle: Bundle) -> float:
    """The rendered startupProbe's window, at least a minute: smoke waits as Kubernetes would."""
    from mlship.image.smoke import READY_TIMEOUT_S

    for manifest in bundle.objects:
        if manifest.get("kind") != "Deployment":
            continue
        for container in manifest["spec"]["template"]["spec"]["containers"]:
            probe = container.get("startupProbe")
            if probe:
                return max(READY_TIMEOUT_S,
                           float(probe["periodSeconds"] * probe["failureThreshold"]))
    return READY_TIMEOUT_S


def _record_loads(config: Path, loaded: MlshipConfig, measured: dict[str, float]) -> list[str]:
    """Write each model's measured load time into mlship.yaml (model.load_seconds), unless the
    recorded one is within RECORD_TOLERANCE of it (no churn for noise); the keys written."""
    from mlship.config.record import dotted, record

    paths = {loaded.name: ("model", "load_seconds"),
             **{model.name: ("models", index, "load_seconds")
                for index, model in enumerate(loaded.models)}}
    models = dict(loaded.served_models)
    text = config.read_text(encoding="utf-8")
    written = []
    for name, seconds in ((n, s) for n, s in measured.items() if n in paths):
        key, recorded = dotted(paths[name]), models[name].load_seconds
        if recorded is not None and abs(seconds - recorded) <= RECORD_TOLERANCE * recorded:
            output.info(f"{key}: {recorded} recorded in {config}, measured {seconds:.2f} s: "
                        "within 10 %, kept")
            continue
        edited = record(text, paths[name], max(seconds, 0.01))
        if edited is None:
            output.warn(f"{config}: cannot add {key} in place (a flow-style mapping?); add "
                        f"`{key}: {seconds:.2f}` by hand to size the startup probe from it")
            continue
        text = edited
        written.append(key)
    if written:
        config.write_text(text, encoding="utf-8")
        _say(f"recorded {', '.join(written)} in {config}: render sizes the startup probe "
             "from it")
    return written


def _say(message: str) -> None:
    from rich.markup import escape

    # soft_wrap: a tag or digest must stay on one line for people who copy it.
    output.stderr_console().print(escape(message), soft_wrap=True)


def _report(result: BuildResult) -> None:
    from mlship.image.build import MB

    _say(f"built {result.image_id[:19]} as {', '.join(result.tags)} in "
                f"{result.duration_s:.1f} s ({result.cached_steps}/{result.steps} steps cached)")
    _say(f"size {result.size_bytes / MB:.1f} MB, {result.added_bytes / MB:.1f} MB over "
                f"the base {result.base_image}")
    for layer in result.biggest_layers():
        if layer.size_bytes:
            _say(f"  {layer.size_bytes / MB:8.1f} MB  {layer.created_by[:80]}")


def _payload(result: BuildResult, budget_mb: int) -> dict[str, Any]:
    from mlship.image.build import MB

    return {
        "image_id": result.image_id,
        "tags": result.tags,
        "base_image": result.base_image,
        "size_bytes": result.size_bytes,
        "base_size_bytes": result.base_size_bytes,
        "added_bytes": result.added_bytes,
        "size_budget_bytes": budget_mb * MB,
        "layers": [layer.to_dict() for layer in result.layers],
        "lock_hash": result.lock_hash,
        "steps": result.steps,
        "cached_steps": result.cached_steps,
        "build_s": round(result.duration_s, 2),
        "digest": None,
    }
