"""Model file -> ``ModelSignature``: everything later stages need to know about an ONNX model.

This is the only module that imports ``onnx``. It reads the file once, validates that it is a
complete ONNX model whose external data is present, and derives frozen facts: the signature
(inputs and outputs with element types and symbolic or dynamic dims, including the sequence and
map types scikit-learn converters produce), opsets, metadata, size, sha256, and an estimate of
the memory needed to load and run the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from mlship.errors import ModelError, ModelFileError
from mlship.model.facts import Dim, ExternalDataFile, ModelSignature, TensorSpec, ValueType

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

    import onnx
    from onnx.external_data_helper import ExternalDataInfo

ONNX_DOMAIN = "ai.onnx"
# Process baseline of the runtime (interpreter, onnxruntime, numpy, HTTP stack), measured as
# the RSS of a ready server holding a tiny model; weights and activations come on top.
RUNTIME_BASELINE_BYTES = 80 * 1024 * 1024


def inspect_model(path: Path, *, load: bool = True,
                  shapes: Mapping[str, tuple[int, ...]] | None = None) -> ModelSignature:
    """Read and validate ``path``; raise ModelFileError (bad file) or ModelError (unservable).

    ``load`` also opens an onnxruntime session on it (graph optimizations off: cheap), so a
    file onnxruntime refuses (an IR version or operator domain it does not have, external data
    of the wrong size) fails here. ``shapes`` is the input profile the static memory estimate
    is made at (default: the runtime's first guess from the model's own dims)."""
    model = _load(path)
    external = _external_data_files(model, path)
    signature = _describe(model, path, external, shapes)
    _check_opset_supported(signature, path)
    if load:
        _check_loadable(path)
    return signature


def _check_loadable(path: Path) -> None:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 4
    try:
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime's own exception types are not importable cheaply
        text = str(err).strip()
        reason = text.splitlines()[0] if text else type(err).__name__
        raise ModelError(f"{path}: onnxruntime {ort.__version__} cannot load this model: "
                         f"{reason}", hint="re-export it for a supported IR version and opset, "
                                           "or pass --no-load to inspect the file only") from None


def _load(path: Path) -> onnx.ModelProto:
    if not path.exists():
        raise ModelFileError(f"{path}: no such file", hint="pass the path of an .onnx model file")
    if path.is_dir():
        raise ModelFileError(f"{path}: is a directory, not an ONNX model file")
    if path.stat().st_size == 0:
        raise ModelFileError(f"{path}: the file is empty, not an ONNX model")
    other = _other_format(path)
    if other is not None:
        kind, hint = other
        raise ModelFileError(f"{path}: {kind}, not an ONNX model", hint=hint)

    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, OSError) as err:
        raise ModelFileError(
            f"{path}: not a valid ONNX model (the file is truncated or not ONNX protobuf: {err})",
            hint="re-export the model, or check that the download or copy completed",
        ) from None
    if model.ir_version <= 0 or not model.HasField("graph") or not model.opset_import:
        raise ModelFileError(
            f"{path}: not an ONNX model (no IR version, graph or opset in the file)",
            hint="mlship reads ONNX files; export your model with torch.onnx, tf2onnx or skl2onnx",
        )
    if not model.graph.output:
        raise ModelFileError(f"{path}: the ONNX graph declares no outputs (the file looks cut off)")
    return model


def _other_format(path: Path) -> tuple[str, str] | None:  # noqa: PLR0911 - one per format
    """What a file that is not ONNX is, when its first bytes say, and how to get ONNX from it."""
    import zipfile

    with path.open("rb") as stream:
        head = stream.read(16)
    if head.startswith(b"PK") and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        if any(name.endswith("data.pkl") for name in names):
            return ("a PyTorch checkpoint (torch.save)",
                    "export the model: torch.onnx.export(model, example_input, 'model.onnx')")
        if any(name.endswith("keras_metadata.pb") or name == "config.json" for name in names):
            return ("a Keras model archive", "convert it: python -m tf2onnx.convert --keras ...")
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return ("a Python pickle (pickle or joblib, e.g. a scikit-learn model)",
                "convert it: skl2onnx.to_onnx(model, X[:1]) for scikit-learn, "
                "onnxmltools for XGBoost/LightGBM")
    if head.startswith(b"\x89HDF"):
        return "an HDF5 file (a Keras .h5 model)", "convert it: python -m tf2onnx.convert --keras"
    if head[4:8] == b"TFL3":
        return "a TensorFlow Lite model", "convert it: python -m tf2onnx.convert --tflite"
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 1 << 27:
        return ("safetensors weights (no graph)", "export the whole model: optimum-cli export "
                "onnx --model NAME out/ (Hugging Face), or torch.onnx.export")
    return None


def _external_info(tensor: onnx.TensorProto, path: Path) -> ExternalDataInfo:
    """The tensor's external-data record; ModelFileError for one onnx refuses (a negative or
    non-numeric offset or length)."""
    from onnx.external_data_helper import ExternalDataInfo

    try:
        return ExternalDataInfo(tensor)
    except ValueError as err:
        reason = " ".join(str(err).split())
        raise ModelFileError(f"{path}: tensor '{tensor.name}' has invalid external data: "
                             f"{reason}") from None


def _external_data_files(model: onnx.ModelProto, path: Path) -> tuple[ExternalDataFile, ...]:
    needed: dict[str, int] = {}  # location -> bytes the model reads from it
    owners: dict[str, str] = {}
    for tensor in _all_tensors(model.graph):
        if tensor.data_location != tensor.EXTERNAL:
            continue
        info = _external_info(tensor, path)
        end = (info.offset or 0) + (info.length or 0)
        needed[info.location] = max(needed.get(info.location, 0), end)
        owners.setdefault(info.location, tensor.name)

    files = []
    base = path.parent
    for location, end in sorted(needed.items()):
        if "\x00" in location:  # no file name holds one (and resolve() would raise)
            raise ModelFileError(f"{path}: external data location {location!r} is not a file "
                                 "name (it holds a NUL character)")
        file_path = (base / location).resolve()
        if not file_path.is_relative_to(base.resolve()):
            raise ModelFileError(
                f"{path}: external data location '{location}' points outside the model's "
                "directory; refusing to read it")
        if not file_path.is_file():
            raise ModelFileError(
                f"{path}: external data file '{location}' (used by tensor '{owners[location]}') "
                f"is missing; expected it at {file_path}",
                hint="copy the external data files next to the model, or re-save the model "
                "with onnx.save_model(..., save_as_external_data=False)")
        size = file_path.stat().st_size
        if size < end:
            raise ModelFileError(
                f"{path}: external data file '{location}' is truncated: {size} bytes, but "
                f"tensor data extends to byte {end}")
        files.append(ExternalDataFile(location, size, _sha256(file_path)))
    return tuple(files)


def _all_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Initializers and tensor attributes, including those of subgraphs (If, Loop, Scan)."""
    yield from graph.initializer
    yield from (sparse.values for sparse in graph.sparse_initializer)
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from _all_tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from _all_tensors(subgraph)


def _describe(model: onnx.ModelProto, path: Path, external: tuple[ExternalDataFile, ...],
              shapes: Mapping[str, tuple[int, ...]] | None) -> ModelSignature:
    graph = model.graph
    initializer_names = {t.name for t in graph.initializer}
    inputs = tuple(_spec(v) for v in graph.input if v.name not in initializer_names)
    outputs = tuple(_spec(v) for v in graph.output)
    opsets = {(o.domain or ONNX_DOMAIN): o.version for o in model.opset_import}
    # Weights kept in Constant nodes (common in exports from some converters) count too.
    weights = sum(_tensor_bytes(t) for t in _all_tensors(graph))
    profile = dict(shapes or {}) or _first_guess(inputs, model)
    peak = _peak_activation_bytes(model, initializer_names, profile)
    warnings = []
    if not inputs:
        warnings.append("the graph has no inputs that are not initializers")
    return ModelSignature(
        path=str(path),
        size_bytes=path.stat().st_size,
        sha256=_sha256(path),
        ir_version=model.ir_version,
        producer_name=model.producer_name,
        producer_version=model.producer_version,
        domain=model.domain,
        model_version=model.model_version,
        doc_string=model.doc_string,
        opsets=opsets,
        inputs=inputs,
        outputs=outputs,
        metadata={p.key: p.value for p in model.metadata_props},
        external_data=external,
        weights_bytes=weights,
        peak_activation_bytes=peak,
        # onnxruntime holds the weights twice while it builds the session (proto + prepacked
        # copies) and allocates activations from an arena that grows to about twice the peak.
        memory_estimate_bytes=RUNTIME_BASELINE_BYTES + 2 * weights + 2 * peak,
        warnings=tuple(warnings),
    )


def _spec(value_info: onnx.ValueInfoProto) -> TensorSpec:
    return TensorSpec(value_info.name, _value_type(value_info.type), value_info.doc_string)


def _value_type(type_proto: onnx.TypeProto) -> ValueType:
    which = type_proto.WhichOneof("value")
    if which in ("tensor_type", "sparse_tensor_type"):
        tensor = getattr(type_proto, which)
        shape = None
        if tensor.HasField("shape"):
            shape = tuple(_dim(d) for d in tensor.shape.dim)
        kind = "tensor" if which == "tensor_type" else "sparse_tensor"
        return ValueType(kind, dtype_name(tensor.elem_type), shape)
    if which == "sequence_type":
        return ValueType("sequence", element=_value_type(type_proto.sequence_type.elem_type))
    if which == "optional_type":
        return ValueType("optional", element=_value_type(type_proto.optional_type.elem_type))
    if which == "map_type":
        map_type = type_proto.map_type
        return ValueType("map", dtype=dtype_name(map_type.key_type),
                         element=_value_type(map_type.value_type))
    return ValueType("unknown")


def _dim(dim: onnx.TensorShapeProto.Dimension) -> Dim:
    if dim.HasField("dim_value"):
        return Dim(size=dim.dim_value)
    if dim.HasField("dim_param") and dim.dim_param:
        return Dim(symbol=dim.dim_param)
    return Dim()


def dtype_name(elem_type: int) -> str:
    """ONNX element type -> a numpy-style name ("float32", "string", "bfloat16")."""
    from onnx import TensorProto, helper

    if elem_type == TensorProto.STRING:
        return "string"
    try:
        return str(helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, ValueError, TypeError):
        return str(TensorProto.DataType.Name(elem_type)).lower()


def _tensor_bytes(tensor: onnx.TensorProto) -> int:
    from onnx.external_data_helper import ExternalDataInfo

    if tensor.data_location == tensor.EXTERNAL:
        return ExternalDataInfo(tensor).length or 0
    if tensor.raw_data:
        return len(tensor.raw_data)
    count = 1
    for d in tensor.dims:
        count *= d
    return count * _itemsize(tensor.data_type)


def _itemsize(elem_type: int) -> int:
    from onnx import helper

    try:
        return helper.tensor_dtype_to_np_dtype(elem_type).itemsize
    except (KeyError, ValueError, TypeError):
        return 8


def _first_guess(inputs: tuple[TensorSpec, ...], model: onnx.ModelProto
                 ) -> dict[str, tuple[int, ...]]:
    """The profile the runtime tries first: the model's own dims, then a common size."""
    from mlship_runtime.profile import candidates

    metadata = [{"name": spec.name, "datatype": "FP32",
                 "shape": [-1 if d.size is None else d.size for d in spec.type.shape],
                 "symbols": [d.symbol for d in spec.type.shape]}
                for spec in inputs if spec.is_tensor and spec.type.shape is not None]
    if not metadata:
        return {}
    first = candidates(metadata, {p.key: p.value for p in model.metadata_props})[0]
    return dict(first.shapes)


def _peak_activation_bytes(model: onnx.ModelProto, initializers: set[str],
                           profile: Mapping[str, tuple[int, ...]]) -> int:
    """Largest sum of one node's non-weight inputs and outputs, at the input ``profile``
    (dims shape inference cannot resolve count as 1)."""
    import onnx

    concrete = onnx.ModelProto()
    concrete.CopyFrom(model)
    for value in concrete.graph.input:
        shape = profile.get(value.name)
        dims = value.type.tensor_type.shape.dim
        if shape is None or len(shape) != len(dims):
            continue
        for dim, size in zip(dims, shape, strict=True):
            dim.Clear()
            dim.dim_value = size
    try:
        inferred = onnx.shape_inference.infer_shapes(concrete, strict_mode=False,
                                                     data_prop=True)
    except Exception:
        inferred = concrete
    graph = inferred.graph
    sizes: dict[str, int] = {}
    for info in (*graph.input, *graph.value_info, *graph.output):
        tensor = info.type.tensor_type
        if info.type.WhichOneof("value") != "tensor_type" or not tensor.HasField("shape"):
            continue
        count = 1
        for d in tensor.shape.dim:
            count *= d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1
        sizes[info.name] = count * _itemsize(tensor.elem_type)
    peak = 0
    for node in graph.node:
        names = [n for n in (*node.input, *node.output) if n and n not in initializers]
        peak = max(peak, sum(sizes.get(n, 0) for n in names))
    return peak


def max_supported_opset() -> tuple[str, int]:
    """The installed onnxruntime's version and the newest ai.onnx opset it knows."""
    import onnxruntime
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

    newest = max(s.since_version for s in ort_state.get_all_operator_schema()
                 if s.domain in ("", ONNX_DOMAIN))
    return onnxruntime.__version__, newest


def _check_opset_supported(signature: ModelSignature, path: Path) -> None:
    opset = signature.opsets.get(ONNX_DOMAIN)
    if opset is None:
        return
    ort_version, newest = max_supported_opset()
    if opset > newest:
        raise ModelError(
            f"{path}: uses ONNX opset {opset}, newer than the installed onnxruntime "
            f"{ort_version} supports (opsets up to {newest})",
            hint=f"upgrade onnxruntime, or re-export the model with opset_version<={newest}")


def _sha256(path: Path) -> str:
    # One implementation with the runtime's manifest checks, so digests always agree.
    from mlship_runtime.manifest import sha256_file

    return sha256_file(path)
