"""Batch inference: ``python -m mlship_runtime.batch --input URI [--output URI]``.

Runs the model (``--model`` or ``MLSHIP_RUNTIME_MODEL``, fetched and verified like the server's)
over every ``.npy``, ``.npz`` and ``.jsonl`` file under a local directory or an ``s3://`` prefix,
and writes one output per input: ``NAME.out.npz`` for arrays (one array per model output) and
``NAME.out.jsonl`` for JSON lines (one prediction per line), beside the inputs or under
``--output``. The rendered CronJob runs exactly this command in the serving image.

Resumable: an input whose output exists is skipped, and outputs are written whole or not at all
(a temporary file renamed into place; an S3 PUT is atomic), so a run killed at any point and
started again finishes without redoing or losing work. A file that cannot be read or run is
reported and the run goes on; the summary counts written, skipped and failed files.

Exit codes: 0 every input has an output, 1 some inputs failed, 2 invalid options, 3 the model
cannot be loaded, 11 storage (a download, a listing, a write or a digest) failed.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_MODEL, EXIT_STORAGE = 0, 1, 2, 3, 11
INPUT_SUFFIXES = (".npy", ".npz", ".jsonl")
OUTPUT_MARK = ".out"
PARTIAL_MARK = ".partial-"
DEFAULT_BATCH_SIZE = 64


@dataclass
class Summary:
    input: str
    output: str
    model: str
    files: int = 0
    written: int = 0
    skipped: int = 0
    failed: int = 0
    rows: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)
    duration_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class StorageFailure(Exception):
    """Listing, reading or writing the input/output location failed: the run cannot go on."""


def output_name(name: str) -> str:
    """``day1/a.npy`` -> ``day1/a.out.npz``; ``b.jsonl`` -> ``b.out.jsonl``."""
    stem, _, suffix = name.rpartition(".")
    return f"{stem}{OUTPUT_MARK}.{'jsonl' if suffix == 'jsonl' else 'npz'}"


def is_input(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return base.endswith(INPUT_SUFFIXES) and not base.startswith(".") and \
        not base.rpartition(".")[0].endswith(OUTPUT_MARK)


class _LocalDir:
    def __init__(self, root: Path) -> None:
        self.root = root

    def uri(self, name: str) -> str:
        return str(self.root / name)

    def names(self, *, missing_ok: bool = False) -> list[str]:
        if not self.root.is_dir():
            if missing_ok:
                return []  # an output directory is created by the first write
            raise StorageFailure(f"{self.root}: no such directory")
        return sorted(path.relative_to(self.root).as_posix()
                      for path in self.root.rglob("*") if path.is_file())

    def read(self, name: str) -> bytes:
        return (self.root / name).read_bytes()

    def write(self, name: str, data: bytes) -> None:
        final = self.root / name
        final.parent.mkdir(parents=True, exist_ok=True)
        partial = final.with_name(f".{final.name}{PARTIAL_MARK}{os.getpid()}")
        with partial.open("wb") as sink:
            sink.write(data)
            sink.flush()
            os.fsync(sink.fileno())  # the data is on disk before the name says it is complete
        partial.replace(final)

    def clean(self) -> None:
        """Drop temporary files a killed run left behind (never a complete output)."""
        if self.root.is_dir():
            for leftover in self.root.rglob(f".*{PARTIAL_MARK}*"):
                leftover.unlink(missing_ok=True)


class _S3Prefix:
    def __init__(self, uri: str) -> None:
        from mlship_runtime.s3 import S3Client, parse_s3_uri

        self.bucket, key = parse_s3_uri(uri)
        self.prefix = key if not key or key.endswith("/") else f"{key}/"
        self.client = S3Client()

    def uri(self, name: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}{name}"

    def names(self, *, missing_ok: bool = False) -> list[str]:
        return sorted(key[len(self.prefix):] for key, _ in self.client.list(self.bucket,
                                                                            self.prefix))

    def read(self, name: str) -> bytes:
        return self.client.get(self.bucket, self.prefix + name)

    def write(self, name: str, data: bytes) -> None:
        self.client.put(self.bucket, self.prefix + name, data)  # a PUT is all or nothing

    def clean(self) -> None:
        return None


def _location(uri: str) -> _LocalDir | _S3Prefix:
    return _S3Prefix(uri) if uri.startswith("s3://") else _LocalDir(Path(uri))


def run_batch(model_settings: Any, input_uri: str, output_uri: str | None = None, *,
              batch_size: int = DEFAULT_BATCH_SIZE,
              on_file: Callable[[dict[str, Any]], None] | None = None) -> Summary:
    """Run every input without an output; raises StorageFailure, FetchError or S3Error."""
    from mlship_runtime.fetch import resolve
    from mlship_runtime.s3 import S3Error
    from mlship_runtime.session import ModelSession

    started = time.perf_counter()
    summary = Summary(input_uri, output_uri or input_uri, model_settings.model)
    try:
        source = _location(input_uri)
        target = _location(output_uri) if output_uri else source
        target.clean()
        names = [name for name in source.names() if is_input(name)]
        existing = set(target.names(missing_ok=True))
    except (OSError, S3Error) as exc:
        raise StorageFailure(str(exc)) from None
    session = ModelSession(resolve(model_settings))
    summary.files = len(names)
    for index, name in enumerate(names, 1):
        out = output_name(name)
        event: dict[str, Any] = {"index": index, "total": len(names), "input": name,
                                 "output": target.uri(out)}
        if out in existing:
            summary.skipped += 1
            event["status"] = "skipped"
        else:
            try:
                data = source.read(name)
            except (OSError, S3Error) as exc:
                raise StorageFailure(str(exc)) from None
            try:
                result, rows = _infer(session, name, data, batch_size)
            except Exception as exc:  # a bad file must not stop the others
                summary.failed += 1
                summary.failures.append({"input": source.uri(name), "error": _one_line(exc)})
                event.update(status="failed", error=_one_line(exc))
            else:
                try:
                    target.write(out, result)
                except (OSError, S3Error) as exc:
                    raise StorageFailure(str(exc)) from None
                existing.add(out)
                summary.written += 1
                summary.rows += rows
                event.update(status="written", rows=rows)
        if on_file is not None:
            on_file(event)
    summary.duration_s = round(time.perf_counter() - started, 3)
    return summary


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _infer(session: Any, name: str, data: bytes, batch_size: int) -> tuple[bytes, int]:
    """Run one input file; its output file's bytes and the rows it held."""
    import numpy as np

    if name.endswith(".jsonl"):
        return _infer_lines(session, data, batch_size)
    if name.endswith(".npy"):
        if len(session.inputs) != 1:
            raise ValueError(f"a .npy file holds one array; the model has inputs "
                             f"{[m['name'] for m in session.inputs]}: use .npz")
        arrays = {session.inputs[0]["name"]: np.load(io.BytesIO(data), allow_pickle=False)}
    else:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    rows = next(iter(arrays.values())).shape[0] if arrays and next(
        iter(arrays.values())).ndim else 1
    step = batch_size if session.batchable else max(rows, 1)
    parts: list[list[np.ndarray]] = []
    for start in range(0, max(rows, 1), step):
        chunk = {key: value[start:start + step] if session.batchable else value
                 for key, value in arrays.items()}
        parts.append(_run(session, chunk))
    outputs = {name: np.concatenate([part[i] for part in parts]) if session.batchable
               else parts[0][i] for i, name in enumerate(session.output_names)}
    buffer = io.BytesIO()
    arrays_out: dict[str, Any] = {key: value.astype(str) if value.dtype == object else value
                                  for key, value in outputs.items()}
    np.savez(buffer, **arrays_out)
    return buffer.getvalue(), rows


def _infer_lines(session: Any, data: bytes, batch_size: int) -> tuple[bytes, int]:
    import orjson

    from mlship_runtime.predict import decode, encode

    lines = [line for line in data.splitlines() if line.strip()]
    step = batch_size if session.batchable else 1
    written: list[bytes] = []
    for start in range(0, len(lines), step):
        try:
            instances = [orjson.loads(line) for line in lines[start:start + step]]
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"lines {start + 1}-{start + step}: malformed JSON: {exc}") from None
        inputs, _ = decode(orjson.dumps({"instances": instances}), session)
        predictions = orjson.loads(encode(session, _run(session, inputs), True))["predictions"]
        written += [orjson.dumps(item) for item in predictions]
    return b"".join(line + b"\n" for line in written), len(lines)


def _run(session: Any, inputs: dict[str, Any]) -> list[Any]:
    from mlship_runtime.signature import v2_datatype_of

    session.check(inputs, {key: v2_datatype_of(value) for key, value in inputs.items()})
    return list(session.run(session.feed(inputs), session.output_names))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mlship_runtime.batch",
        description="Run the model over every .npy, .npz and .jsonl file of a directory or "
                    "s3:// prefix; resumable. Runtime options (model, model sha256, cache dir, "
                    "threads) also come from MLSHIP_RUNTIME_* variables.")
    parser.add_argument("--input", required=True, help="directory or s3://BUCKET/PREFIX/")
    parser.add_argument("--output", default=None, help="where outputs go (default: beside "
                                                        "the inputs)")
    parser.add_argument("--model", default=None, help="model path or URI [env "
                                                      "MLSHIP_RUNTIME_MODEL]")
    parser.add_argument("--model-sha256", default=None, help="expected sha256 of the model")
    parser.add_argument("--cache-dir", default=None, help="download cache for remote models")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                        help="rows per inference")
    parser.add_argument("--json", action="store_true", help="print one JSON summary on stdout")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    import json
    import logging

    from mlship_runtime.fetch import FetchError
    from mlship_runtime.options import from_env
    from mlship_runtime.providers import EXIT_PROVIDER, ProviderMissing
    from mlship_runtime.s3 import S3Error
    from mlship_runtime.settings import RuntimeSettings

    args = _parser().parse_args(argv)
    try:
        values = from_env(os.environ)
        for key in ("model", "model_sha256", "cache_dir"):
            if getattr(args, key):
                values[key] = getattr(args, key)
        if args.model:  # one model: a repository in the env (several models) does not apply
            values.pop("models", None)
        if "model" not in values or args.batch_size < 1:
            raise ValueError("model: pass --model or set MLSHIP_RUNTIME_MODEL; --batch-size "
                             ">= 1")
        settings = RuntimeSettings(**values)
    except ValueError as exc:
        print(f"mlship-runtime batch: invalid settings: {exc}", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def progress(event: dict[str, Any]) -> None:
        detail = f"{event.get('rows', '')} rows" if event["status"] == "written" else \
            event.get("error", "output exists")
        print(f"[{event['index']}/{event['total']}] {event['input']}: {event['status']} "
              f"({detail})", file=sys.stderr, flush=True)

    try:
        summary = run_batch(settings, args.input, args.output, batch_size=args.batch_size,
                            on_file=progress)
    except (StorageFailure, FetchError, S3Error) as exc:
        print(f"mlship-runtime batch: {exc}", file=sys.stderr)
        return EXIT_STORAGE
    except ProviderMissing as exc:
        print(f"mlship-runtime batch: cannot load model {settings.model}: {exc}",
              file=sys.stderr)
        return EXIT_PROVIDER
    except Exception as exc:  # the model cannot be loaded
        print(f"mlship-runtime batch: cannot load model {settings.model}: {_one_line(exc)}",
              file=sys.stderr)
        return EXIT_MODEL
    print(f"batch done: {summary.written} written, {summary.skipped} skipped, "
          f"{summary.failed} failed of {summary.files} input file(s), {summary.rows} rows in "
          f"{summary.duration_s:.1f} s", file=sys.stderr)
    if args.json:
        document = {"schema": "mlship_runtime.batch/v1", "ok": summary.failed == 0,
                    **summary.to_dict()}
        print(json.dumps(document, indent=2))
    return EXIT_OK if summary.failed == 0 else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
