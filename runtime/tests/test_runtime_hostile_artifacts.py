"""Hostile artifacts (issue 15): weights swapped with their manifest entry, a cache entry
keyed by the graph alone, and external-data locations outside the model's folder. Each start
ends in its documented exit code (11 storage, 3 model) without ever turning ready, within a
bounded wait, while ``/v2/health/live`` answers until the process exits (``hostile``); S3
cases run against moto's server.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import hostile
import modelzoo
import numpy as np
import onnxruntime as ort
import pytest
from hostile import WEIGHTS, error_lines, exit_never_ready, outputs, reference, tampered_copy
from mlship_runtime.manifest import MANIFEST_NAME, Manifest, ManifestFile, sha256_file
from onnx import TensorProto, helper


@pytest.fixture(scope="module")
def external_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return hostile.external_model(tmp_path_factory.mktemp("external"))


# ---- 2: the pinned digest and the cache key cover the external data --------------------------

def test_pinned_digest_refuses_weights_swapped_with_their_manifest_entry(
        moto_s3, start_server, external_model, tmp_path):
    bucket = moto_s3.new_bucket()
    original = moto_s3.upload_model(bucket, "m/", external_model, (WEIGHTS,))
    # The attacker replaces the weights and rewrites the manifest to match them.
    swapped = moto_s3.upload_model(bucket, "m/", tampered_copy(external_model, tmp_path / "t"),
                                   (WEIGHTS,))
    assert swapped.model_file == original.model_file
    assert swapped.digest != original.digest
    source = f"s3://{bucket}/m/mlp.onnx"
    server = start_server(source, "--cache-dir", str(tmp_path / "c"), "--model-sha256",
                          original.digest, env=moto_s3.env())
    assert exit_never_ready(server) == 11
    [line] = error_lines(server)
    assert f"the model's digest is {swapped.digest} but the configuration pins " \
           f"{original.digest}" in line
    # A pin of the .onnx alone is refused as not covering the weights.
    graph_only = start_server(source, "--cache-dir", str(tmp_path / "c"), "--model-sha256",
                              original.model_file.sha256, env=moto_s3.env())
    assert exit_never_ready(graph_only) == 11
    [line] = error_lines(graph_only)
    assert "pins only the .onnx" in line
    assert original.digest not in line
    assert swapped.digest in line
    assert not list((tmp_path / "c").rglob("*.bin"))


def test_cache_entries_are_keyed_by_the_whole_model(moto_s3, start_server, external_model,
                                                    tmp_path):
    bucket = moto_s3.new_bucket()
    original = moto_s3.upload_model(bucket, "m/", external_model, (WEIGHTS,))
    cache = tmp_path / "c"
    source = f"s3://{bucket}/m/mlp.onnx"
    first = start_server(source, "--cache-dir", str(cache), "--model-sha256", original.digest,
                         env=moto_s3.env())
    first.wait_ready(60)
    assert first.stop() == 0
    other = tampered_copy(external_model, tmp_path / "t")
    swapped = moto_s3.upload_model(bucket, "m/", other, (WEIGHTS,))
    # Unpinned, the new push is a new model: its own entry, its own weights served.
    unpinned = start_server(source, "--cache-dir", str(cache), env=moto_s3.env())
    unpinned.wait_ready(60)
    np.testing.assert_allclose(outputs(unpinned.url, "mlp"), reference(other), rtol=1e-5,
                               atol=1e-5)
    assert unpinned.stop() == 0
    assert sorted(p.name for p in cache.iterdir() if not p.name.startswith(".")) == \
        sorted([original.digest, swapped.digest])
    assert sha256_file(cache / original.digest / WEIGHTS) == original.files[1].sha256
    # Pinned, the original is served from its entry: the new push did not refill it.
    pinned = start_server(source, "--cache-dir", str(cache), "--model-sha256", original.digest,
                          env=moto_s3.env())
    pinned.wait_ready(60)
    assert "found in the cache" in pinned.log()
    np.testing.assert_allclose(outputs(pinned.url, "mlp"), reference(external_model),
                               rtol=1e-5, atol=1e-5)
    assert pinned.stop() == 0


def test_a_cache_entry_under_the_graph_digest_cannot_serve_other_weights(
        moto_s3, start_server, external_model, tmp_path):
    """An entry named by the .onnx's sha256 whose recorded manifest lists the .onnx alone
    (what a graph-keyed cache held): the weights beside it were never verified."""
    bucket = moto_s3.new_bucket()
    original = moto_s3.upload_model(bucket, "m/", external_model, (WEIGHTS,))
    graph = original.model_file
    other = tampered_copy(external_model, tmp_path / "t")
    cache = tmp_path / "c"
    shutil.copytree(other.parent, cache / graph.sha256)
    (cache / graph.sha256 / MANIFEST_NAME).write_text(
        Manifest("mlp.onnx", (graph,), "test").to_json())
    server = start_server(f"s3://{bucket}/m/mlp.onnx", "--cache-dir", str(cache),
                          "--model-sha256", graph.sha256, env=moto_s3.env())
    assert exit_never_ready(server) == 11
    [line] = error_lines(server)
    assert f"external data file '{WEIGHTS}' is not in the model's manifest" in line


def test_local_pinned_digest_covers_external_data(start_server, external_model, tmp_path):
    model = tampered_copy(external_model, tmp_path / "local")
    files = tuple(ManifestFile(rel, (model.parent / rel).stat().st_size,
                               sha256_file(external_model.parent / rel))
                  for rel in (model.name, WEIGHTS))
    digest = Manifest(model.name, files).digest  # of the untampered model
    server = start_server(model, "--model-sha256", digest)
    assert exit_never_ready(server) == 11
    [line] = error_lines(server)
    assert f"expected {digest}" in line
    assert "1 external-data file(s)" in line
    good = start_server(external_model, "--model-sha256", digest)
    good.wait_ready(60)
    assert good.stop() == 0


# ---- 7: external data outside the model's folder -----------------------------------------------

def sparse_external(path: Path, location: str) -> Path:
    """x [N,4] -> x + dense(bias), the bias a sparse initializer whose values are external
    data at ``location`` (onnxruntime 1.24-1.26 followed "../" there)."""
    values = TensorProto(name="bias_values", data_type=TensorProto.FLOAT, dims=[2],
                         data_location=TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", "0"), ("length", "8")):
        entry = values.external_data.add()
        entry.key, entry.value = key, value
    indices = helper.make_tensor("bias_indices", TensorProto.INT64, [2], [1, 3])
    sparse = helper.make_sparse_tensor(values, indices, [4])
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "bias"], ["y"])], "sparse",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        sparse_initializer=[sparse])
    graph.sparse_initializer[0].values.name = "bias"
    model = helper.make_model(graph, opset_imports=modelzoo.OPSET)
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


@pytest.mark.parametrize("kind", ["../", "absolute", "symlink out", "sparse ../"])
def test_external_data_outside_the_model_folder_is_refused_by_the_runtime(
        start_server, tmp_path, kind):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(4, dtype=np.float32).tobytes())  # a readable file it may not
    folder = tmp_path / "model"
    folder.mkdir()
    if kind == "../":
        model = modelzoo.external_data(folder / "m.onnx", "../secret.bin", data=secret)
    elif kind == "absolute":
        model = modelzoo.external_data(folder / "m.onnx", str(secret), data=secret)
    elif kind == "symlink out":
        (folder / "bias.bin").symlink_to(secret)
        model = modelzoo.external_data(folder / "m.onnx", "bias.bin", data=secret)
    else:
        model = sparse_external(folder / "m.onnx", "../secret.bin")
    server = start_server(model)
    assert exit_never_ready(server) == 3
    [line] = error_lines(server)
    assert f"cannot serve model {model}" in line
    assert "outside the model's directory" in line or "relative path inside" in line, line
    assert "Traceback" not in server.log()


def test_downloaded_model_may_name_only_files_its_manifest_lists(moto_s3, start_server,
                                                                  tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    model = modelzoo.external_data(folder / "m.onnx", "bias.bin")
    bucket = moto_s3.new_bucket()
    moto_s3.upload_model(bucket, "m/", model)  # the manifest lists m.onnx alone
    moto_s3.client().upload_file(str(folder / "bias.bin"), bucket, "m/bias.bin")
    server = start_server(f"s3://{bucket}/m/m.onnx", "--cache-dir", str(tmp_path / "c"),
                          env=moto_s3.env())
    assert exit_never_ready(server) == 11
    [line] = error_lines(server)
    assert "external data file 'bias.bin' is not in the model's manifest" in line


def test_onnxruntime_floor_is_the_first_safe_release():
    """1.27 is the first that refuses sparse external data outside the folder; the image's
    lock and the installed release satisfy the floor."""
    root = Path(__file__).resolve().parents[1]
    text = (root / "pyproject.toml").read_text()
    [floor] = [line.split(">=")[1].split('"')[0] for line in text.splitlines()
               if line.strip().startswith('"onnxruntime>=')]

    def version(text: str) -> tuple[int, ...]:
        return tuple(int(part) for part in text.split(".")[:2])

    assert version(floor) >= (1, 27)
    [locked] = [line.split("==")[1].split()[0]
                for line in (root / "requirements.lock").read_text().splitlines()
                if line.startswith("onnxruntime==")]
    assert version(locked) >= version(floor)
    assert version(ort.__version__) >= version(floor)
