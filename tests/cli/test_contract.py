"""The output contract of every command (docs/cli.md), checked on the registered Typer app.

Commands are discovered from the app, so a new command fails here until it has a ``--json``
option, an output schema in ``mlship/schemas/``, and a success and a failure case in
``SUCCESS`` / ``FAILURE`` below (or, when it needs Docker or a cluster, in a module listed in
``COVERED_ELSEWHERE``). Each case runs the command with ``--json`` and validates stdout against
the command's schema, or the error schema and the exit code of its cause.
"""

from __future__ import annotations

import ast
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
import yaml
from jsonschema import Draft202012Validator
from mlship_contract import check_failure, check_success, mlship
from mlship_testsupport import make_model
from typer.testing import CliRunner

from mlship.cli import app
from mlship.cli.contract import (
    NO_JSON,
    RESERVED_PREFIXES,
    available_schemas,
    envvar_name,
    iter_commands,
    load_schema,
    schema_file,
)
from mlship.config.schema import MlshipConfig
from mlship.errors import ExitCode

REPO = Path(__file__).resolve().parents[2]
SOURCE = "mlship @ git+https://example.invalid/mlship@0123456789abcdef"
CLOSED_URL = "http://127.0.0.1:9"  # discard port: nothing listens on loopback there

# (command path, argv after `mlship`) that succeed in the `project` directory.
SUCCESS: dict[tuple[str, ...], list[str]] = {
    ("inspect",): ["inspect", "model.onnx", "--json"],
    ("predict",): ["predict", "--url", "{url}", "--json"],
    ("demo",): ["demo", "--json"],
    ("init",): ["init", "model.onnx", "--config", "new.yaml", "--json"],
    ("render",): ["render", "--out", "out", "--json"],
    ("schema",): ["schema", "build", "--json"],
    ("ci", "github"): ["ci", "github", "--mlship-source", SOURCE, "--json"],
    ("ci", "gitlab"): ["ci", "gitlab", "--mlship-source", SOURCE, "--json"],
    ("deploy",): ["deploy", "--dry-run", "client", "--json"],
    ("baseline",): ["baseline", "--input", "samples.npy", "--model", "model.onnx", "--json"],
    ("batch",): ["batch", "model.onnx", "--input", "batch-in", "--json"],
    ("optimize",): ["optimize", "model.onnx", "--variants", "optimized", "--runs", "1",
                    "--batch", "2", "--out", "variants", "--json"],
    ("compare",): ["compare", "model.onnx", "model.onnx", "--samples", "4", "--json"],
}
# (command path, cause) -> (argv, exit code)
FAILURE: dict[tuple[tuple[str, ...], str], tuple[list[str], ExitCode]] = {
    (("inspect",), "missing file"): (["inspect", "absent.onnx", "--json"], ExitCode.BAD_INPUT),
    (("inspect",), "opset too new"): (["inspect", "future.onnx", "--json"], ExitCode.MODEL),
    (("predict",), "no server"): (["predict", "--url", CLOSED_URL, "--json"], ExitCode.SERVER),
    (("demo",), "usage"): (["demo", "--json", "--no-such-option"], ExitCode.BAD_INPUT),
    (("init",), "exists"): (["init", "model.onnx", "--json"], ExitCode.BAD_INPUT),
    (("render",), "bad config"): (["render", "-c", "broken.yaml", "--json"], ExitCode.BAD_INPUT),
    (("schema",), "unknown"): (["schema", "no-such-command", "--json"], ExitCode.BAD_INPUT),
    (("ci", "github"), "exists"): (["ci", "github", "--mlship-source", SOURCE, "--out",
                                    "mlship.yaml", "--json"], ExitCode.BAD_INPUT),
    (("ci", "gitlab"), "no registry"): (["ci", "gitlab", "--mlship-source", SOURCE,
                                         "--registry", "config", "--json"], ExitCode.BAD_INPUT),
    (("build",), "no docker"): (["build", "--json"], ExitCode.DOCKER),
    (("deploy",), "no kubeconfig"): (["deploy", "--kubeconfig", "absent", "--json"],
                                     ExitCode.CLUSTER),
    (("diff",), "no kubeconfig"): (["diff", "--kubeconfig", "absent", "--json"],
                                   ExitCode.CLUSTER),
    (("delete",), "no kubeconfig"): (["delete", "--kubeconfig", "absent", "--json"],
                                     ExitCode.CLUSTER),
    (("baseline",), "bad option"): (["baseline", "-i", "samples.npy", "--tail", "0.7", "--json"],
                                    ExitCode.BAD_INPUT),
    (("batch",), "broken model"): (["batch", "broken.onnx", "-i", "batch-in", "--json"],
                                   ExitCode.BAD_INPUT),
    (("optimize",), "missing model"): (["optimize", "absent.onnx", "--json"],
                                       ExitCode.BAD_INPUT),
    (("compare",), "missing model"): (["compare", "absent.onnx", "model.onnx", "--json"],
                                      ExitCode.BAD_INPUT),
    (("model", "push"), "missing model"): (["model", "push", "absent.onnx", "s3://b/p/",
                                            "--json"], ExitCode.BAD_INPUT),
    (("model", "ls"), "not s3"): (["model", "ls", "http://x/", "--json"], ExitCode.BAD_INPUT),
    (("model", "pull"), "no endpoint"): (["model", "pull", "s3://b/p/", "--endpoint-url",
                                          CLOSED_URL, "--json"], ExitCode.STORAGE),
}
for _sub, _extra in (("canary", ["--image", "x"]), ("ab", ["--image", "x"]),
                     ("bluegreen", ["--image", "x"]), ("bandit", ["--image", "x"]),
                     ("shadow", ["--image", "x"]),
                     ("status", []), ("promote", []), ("abort", []), ("undo", [])):
    FAILURE[(("rollout", _sub), "no kubeconfig")] = (
        ["rollout", _sub, *_extra, "--kubeconfig", "absent", "--json"], ExitCode.CLUSTER)
FAILURE[(("history",), "no kubeconfig")] = (["history", "--kubeconfig", "absent", "--json"],
                                            ExitCode.CLUSTER)
# Dummy credentials: boto3 never looks for real ones (nor asks an instance metadata service).
AWS_ENV = {"AWS_ACCESS_KEY_ID": "mlship-test", "AWS_SECRET_ACCESS_KEY": "mlship-test",
           "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": "/dev/null",
           "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"}
# Commands whose success (and failures needing Docker, a registry or a cluster) are run by
# these modules with the same checks (mlship_contract.check_success / check_failure).
COVERED_ELSEWHERE: dict[tuple[str, ...], str] = {
    ("build",): "tests/render/test_ci_pipeline_run.py",
    ("push",): "tests/render/test_ci_pipeline_run.py",
    ("diff",): "tests/render/test_ci_pipeline_run.py (success, after the staging deploy)",
    ("delete",): "tests/cluster/test_prune_delete.py (marker k8s)",
    ("model", "push"): "test_model_commands_on_s3 below (marker s3)",
    ("model", "pull"): "test_model_commands_on_s3 below (marker s3)",
    ("model", "ls"): "test_model_commands_on_s3 below (marker s3)",
    ("rollout", "status"): "tests/render/test_ci_pipeline_run.py (after the staging deploy)",
    **{("rollout", sub): "tests/rollout/test_rollout.py (markers k8s, prometheus)"
       for sub in ("canary", "ab", "bluegreen", "promote", "abort", "undo")},
    ("rollout", "bandit"): "tests/rollout/test_rollout_bandit.py (markers k8s, prometheus)",
    ("rollout", "shadow"): "tests/rollout/test_rollout_shadow.py (markers k8s, prometheus)",
    ("history",): "tests/rollout/test_history.py (marker k8s)",
}

runner = CliRunner()


def _commands() -> list[tuple[tuple[str, ...], typer.core.TyperCommand]]:
    return list(iter_commands(typer.main.get_command(app)))


@pytest.fixture
def project(tmp_path: Path, iris_model: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "model.onnx").write_bytes(iris_model.read_bytes())
    (tmp_path / "mlship.yaml").write_text(yaml.safe_dump(
        {"name": "iris", "model": {"source": "model.onnx"}}))
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump(
        {"name": "iris", "model": {"source": "model.onnx"}, "replicas": -1}))
    from mlship.model.inspect import max_supported_opset

    make_model(tmp_path / "future.onnx")
    _set_opset(tmp_path / "future.onnx", max_supported_opset()[1] + 1)
    (tmp_path / "broken.onnx").write_bytes(b"not an onnx model")
    import numpy as np

    rows = np.random.default_rng(0).normal(size=(32, 4)).astype(np.float32)
    np.save(tmp_path / "samples.npy", rows)
    (tmp_path / "batch-in").mkdir()
    np.save(tmp_path / "batch-in" / "a.npy", rows[:3])
    monkeypatch.chdir(tmp_path)
    for variable in [v for v in os.environ if v.startswith(("MLSHIP_", "AWS_", "KUBECONFIG"))]:
        monkeypatch.delenv(variable)
    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")  # only `build` asks
    return tmp_path


def _set_opset(path: Path, opset: int) -> None:
    import onnx

    model = onnx.load(str(path))
    model.opset_import[0].version = opset
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    from mlship.resources import example_model
    from mlship.serving.local_server import LocalServer

    with LocalServer(example_model()) as server:
        from mlship.serving.client import RuntimeClient

        assert RuntimeClient(server.url).wait_ready(timeout_s=60), server.stderr_tail()
        yield server.url


# ---- the registry of commands -----------------------------------------------------------


def test_every_command_has_json_a_schema_and_cases() -> None:
    schemas = set(available_schemas())
    covered = set(SUCCESS) | set(COVERED_ELSEWHERE)
    failing = {path for path, _ in FAILURE} | set(COVERED_ELSEWHERE)
    problems = []
    for path, command in _commands():
        if path in NO_JSON:
            continue
        name = " ".join(path)
        if not any(getattr(p, "opts", None) and "--json" in p.opts for p in command.params):
            problems.append(f"`mlship {name}` has no --json option")
        if schema_file(path).removesuffix(".json") not in schemas:
            problems.append(f"`mlship {name}` has no mlship/schemas/{schema_file(path)}")
        if path not in covered or path not in failing:
            problems.append(f"`mlship {name}` has no success and failure case in "
                            "tests/cli/test_contract.py (SUCCESS/FAILURE, or COVERED_ELSEWHERE "
                            "naming the test that checks it with mlship_contract)")
    assert not problems, "\n".join(problems)


def test_schemas_are_valid_and_each_belongs_to_a_command() -> None:
    paths = {"-".join(path) for path, _ in _commands()}
    for name in available_schemas():
        schema = load_schema(name)
        Draft202012Validator.check_schema(schema)
        assert name == "error" or name in paths, f"{name}.json: no such command"
        kind = schema["properties"]["schema"]["const"]
        assert re.fullmatch(r"mlship\.[a-z][a-z-]*/v[0-9]+", kind), kind
        assert schema["$id"].endswith(f"/{name}.json")


def test_error_schema_lists_exactly_the_documented_exit_codes() -> None:
    codes = load_schema("error")["properties"]["error"]["properties"]["exit_code"]["enum"]
    not_errors = {ExitCode.OK, ExitCode.DIFFERENCES}  # DIFFERENCES prints the diff document
    assert sorted(codes) == sorted(int(code) for code in ExitCode if code not in not_errors)
    table = (REPO / "docs" / "cli.md").read_text()
    for code in ExitCode:
        assert f"| {int(code)} | {code.name} |" in table, code


def test_no_command_prompts() -> None:
    """Nothing asks a question: no prompting option, no input()/prompt/confirm in mlship/."""
    for path, command in _commands():
        for param in command.params:
            assert not getattr(param, "prompt", None), (path, param.name)
    asking = {"input", "prompt", "confirm", "getpass", "ask"}
    for source in (REPO / "mlship").rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            if isinstance(node, ast.Call):
                func = node.func
                name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
                assert name not in asking, f"{source}:{node.lineno} calls {name}()"


# ---- every command with --json, success and failure ------------------------------------


@pytest.mark.parametrize("path", list(SUCCESS), ids=" ".join)
def test_success_document(path: tuple[str, ...], project: Path, request: pytest.FixtureRequest,
                          ) -> None:
    argv = SUCCESS[path]
    if "{url}" in argv:
        argv = [arg.replace("{url}", request.getfixturevalue("server_url")) for arg in argv]
    result = runner.invoke(app, argv)
    assert result.exit_code == 0, result.stderr
    document = check_success(path, result.stdout)
    if path == ("schema",):
        assert document["json_schema"]["properties"]["schema"]["const"] in (
            "mlship.build/v1",)


@pytest.mark.parametrize("case", list(FAILURE), ids=lambda case: f"{' '.join(case[0])}: {case[1]}")
def test_failure_document(case: tuple[tuple[str, ...], str], project: Path) -> None:
    argv, code = FAILURE[case]
    if case[0] == ("build",):  # its own process: a failed docker-py client leaks a socket
        result = mlship(*argv, cwd=project, env={"DOCKER_HOST": os.environ["DOCKER_HOST"]})
        exit_code = result.code
    else:
        result = runner.invoke(app, argv)
        exit_code = result.exit_code
    assert exit_code == code, result.stderr
    check_failure(case[0], result.stdout, code)
    assert result.stderr.startswith(("error: ", "Usage: ")), result.stderr


def test_json_document_is_alone_on_stdout_of_the_process(project: Path) -> None:
    """In a real process: stdout is the document and nothing else, people's text is on stderr."""
    ok = mlship("render", "--out", "out", "--json", cwd=project)
    assert ok.code == 0, ok.stderr
    assert check_success(("render",), ok.stdout)["files"]
    failed = mlship("ci", "github", "--json", "--bogus", cwd=project)
    assert failed.code == 2
    assert check_failure(("ci", "github"), failed.stdout, 2)["error"]["type"] == "UsageError"
    assert "No such option: --bogus" in failed.stderr


# ---- environment variables ---------------------------------------------------------------


def test_every_option_has_its_mlship_variable_and_none_collides() -> None:
    config_keys = set(MlshipConfig.model_fields)
    seen: dict[str, str] = {}
    for path, command in _commands():
        for param in command.params:
            if getattr(param, "param_type_name", "") != "option" or param.name == "help":
                continue
            flag = next(opt for opt in param.opts if opt.startswith("--"))
            name = envvar_name(path, flag)
            assert param.envvar[0] == name, (path, flag, param.envvar)
            assert "__" not in name, name
            assert not name.startswith(RESERVED_PREFIXES), name
            # never read as an mlship.yaml override (MLSHIP_<TOP-LEVEL KEY>[__...])
            assert name.removeprefix("MLSHIP_").lower() not in config_keys, name
            assert seen.setdefault(name, " ".join(path)) == " ".join(path), name


def test_options_read_their_variables(project: Path) -> None:
    """A value option, a flag and a --x/--no-x flag set through MLSHIP_<COMMAND>_<OPTION>, next
    to an mlship.yaml override (MLSHIP_REPLICAS) that must still apply."""
    env = {"MLSHIP_RENDER_OUT": "from-env", "MLSHIP_RENDER_JSON": "1", "MLSHIP_REPLICAS": "3"}
    result = mlship("render", cwd=project, env=env)
    assert result.code == 0, result.stderr
    assert check_success(("render",), result.stdout)["out"] == "from-env"
    deployment = yaml.safe_load((project / "from-env" / "k8s" / "deployment.yaml").read_text())
    assert deployment["spec"]["replicas"] == 3
    env = {"MLSHIP_CI_GITLAB_SMOKE": "true", "MLSHIP_CI_GITLAB_MLSHIP_SOURCE": SOURCE}
    result = mlship("ci", "gitlab", "--json", cwd=project, env=env)
    assert result.code == 0, result.stderr
    document = check_success(("ci", "gitlab"), result.stdout)
    assert document["smoke"] is True
    assert document["mlship_source"] == SOURCE
    assert "--smoke" in document["commands"]["build"]


def test_help_shows_the_variables() -> None:
    result = runner.invoke(app, ["build", "--help"])
    assert "MLSHIP_BUILD_TAG" in result.stdout
    assert "MLSHIP_BUILD_NO_CACHE" in result.stdout


# ---- colours, completion, version --------------------------------------------------------


def _on_a_terminal(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    """stderr of `mlship ARGS` when stderr is a pseudo-terminal."""
    import pty
    import subprocess
    import sys

    from mlship_contract import clean_env

    leader, follower = pty.openpty()
    try:
        process = subprocess.run([sys.executable, "-m", "mlship", *args], cwd=cwd,
                                 env=clean_env({"TERM": "xterm-256color", **env}),
                                 stdout=subprocess.PIPE, stderr=follower, timeout=120,
                                 check=False)
        os.close(follower)
        follower = -1
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the terminal is closed and drained
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert process.returncode == 2
        return b"".join(chunks).decode(errors="replace")
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)


@pytest.mark.parametrize(("extra", "env", "coloured"), [
    ([], {}, True),
    ([], {"NO_COLOR": "1"}, False),
    (["--no-color"], {}, False),
    ([], {"MLSHIP_NO_COLOR": "1"}, False),
], ids=["terminal", "NO_COLOR", "--no-color", "MLSHIP_NO_COLOR"])
def test_colours_only_on_a_terminal_and_when_not_refused(
        extra: list[str], env: dict[str, str], coloured: bool, tmp_path: Path) -> None:
    text = _on_a_terminal([*extra, "inspect", "absent.onnx"], tmp_path, env)
    assert "absent.onnx: no such file" in text
    assert ("\x1b[" in text) is coloured, repr(text)


def test_no_colours_when_not_a_terminal(tmp_path: Path) -> None:
    result = mlship("inspect", "absent.onnx", cwd=tmp_path, env={"TERM": "xterm-256color"})
    assert result.code == 2
    assert result.stderr.startswith("error: absent.onnx: no such file")
    assert "\x1b[" not in result.stderr


def test_shell_completion_script_and_answers(tmp_path: Path) -> None:
    script = mlship("--show-completion", "bash", cwd=tmp_path)
    assert script.code == 0, script.stderr
    assert "_MLSHIP_COMPLETE=complete_bash" in script.stdout
    answer = mlship(cwd=tmp_path, env={"_MLSHIP_COMPLETE": "complete_bash",
                                       "COMP_WORDS": "mlship ci gi", "COMP_CWORD": "2"})
    assert answer.code == 0, answer.stderr
    assert answer.stdout.split() == ["github", "gitlab"]
    options = mlship(cwd=tmp_path, env={"_MLSHIP_COMPLETE": "complete_bash",
                                        "COMP_WORDS": "mlship build --no", "COMP_CWORD": "2"})
    assert options.stdout.split() == ["--no-cache", "--no-record"]


def test_install_completion_writes_the_shell_setup(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    result = mlship("--install-completion", "bash", cwd=tmp_path, env={"HOME": str(home)})
    assert result.code == 0, result.stderr
    assert "mlship" in (home / ".bashrc").read_text()
    installed = list((home / ".bash_completions").glob("mlship*"))
    assert len(installed) == 1
    assert "_MLSHIP_COMPLETE" in installed[0].read_text()


def test_version_names_mlship_runtime_and_onnxruntime(tmp_path: Path) -> None:
    import onnxruntime

    from mlship import __version__

    result = mlship("--version", cwd=tmp_path)
    assert result.code == 0
    assert result.stdout.splitlines() == [f"mlship {__version__}",
                                          f"mlship-runtime {__version__}",
                                          f"onnxruntime {onnxruntime.__version__}"]


@pytest.mark.s3
def test_model_commands_on_s3(moto_s3, iris_model: Path, tmp_path: Path) -> None:
    """`mlship model push|ls|pull --json` against moto's S3 server on loopback."""
    bucket = moto_s3.new_bucket()
    env = {key: value for key, value in moto_s3.env().items() if key.startswith("AWS_")}
    pushed = mlship("model", "push", str(iris_model), f"s3://{bucket}/iris/v1/", "--json",
                    cwd=tmp_path, env=env)
    assert pushed.code == 0, pushed.stderr
    document = check_success(("model", "push"), pushed.stdout)
    with moto_s3.unauthenticated():  # ListObjectsV2 with a '/' prefix: see motoserver.py
        listed = mlship("model", "ls", f"s3://{bucket}/", "--json", cwd=tmp_path, env=env)
    assert listed.code == 0, listed.stderr
    assert check_success(("model", "ls"), listed.stdout)["models"][0]["sha256"] == \
        document["sha256"]
    pulled = mlship("model", "pull", f"s3://{bucket}/iris/v1/", "--out", "pulled", "--json",
                    cwd=tmp_path, env=env)
    assert pulled.code == 0, pulled.stderr
    check_success(("model", "pull"), pulled.stdout)
    missing = mlship("model", "pull", f"s3://{bucket}/absent/", "--json", cwd=tmp_path, env=env)
    assert missing.code == ExitCode.STORAGE, missing.stderr
    check_failure(("model", "pull"), missing.stdout, ExitCode.STORAGE)
