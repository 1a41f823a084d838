"""mlship.storage without a server: URIs, manifest entries, and refusals before any request."""

from __future__ import annotations

import pytest

from mlship.errors import BadInputError
from mlship.model.storage import S3Location, S3Options, model_files, push, signature_summary


@pytest.mark.parametrize(("uri", "bucket", "prefix"), [
    ("s3://models", "models", ""),
    ("s3://models/", "models", ""),
    ("s3://models/iris/v1", "models", "iris/v1/"),
    ("s3://models/iris/v1/", "models", "iris/v1/"),
])
def test_locations(uri, bucket, prefix):
    location = S3Location.parse(uri)
    assert (location.bucket, location.prefix) == (bucket, prefix)


@pytest.mark.parametrize("uri", ["models/iris", "s3://", "s3:///key", "https://x/y"])
def test_not_s3_uris_are_bad_input(uri):
    with pytest.raises(BadInputError, match="not an s3:// URI"):
        S3Location.parse(uri)


def test_push_takes_a_prefix_not_a_file_name(iris_model):
    with pytest.raises(BadInputError) as caught:
        push(iris_model, "s3://models/iris/v1/iris.onnx", S3Options())
    assert caught.value.message == "s3://models/iris/v1/iris.onnx: push takes a prefix, not a " \
                                   "file name"
    assert caught.value.hint == f"mlship model push {iris_model} s3://models/iris/v1/"


def test_manifest_entries_cover_external_data(tmp_path):
    import onnx
    from mlship_testsupport import make_model

    from mlship.model.inspect import inspect_model

    model = onnx.load(str(make_model(tmp_path / "inline.onnx", weights=4096)))
    (tmp_path / "w").mkdir()
    onnx.save_model(model, str(tmp_path / "m.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="w/data.bin", size_threshold=0)
    signature = inspect_model(tmp_path / "m.onnx")
    files = model_files(signature)
    assert [entry.path for entry in files] == ["m.onnx", "w/data.bin"]
    assert files[1].size_bytes == (tmp_path / "w" / "data.bin").stat().st_size
    summary = signature_summary(signature)
    assert summary["inputs"] == {"x": "float32[batch, 4]"}
    assert summary["opsets"] == {"ai.onnx": 17}
