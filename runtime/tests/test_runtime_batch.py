"""`python -m mlship_runtime.batch`: outputs equal onnxruntime's, reruns skip finished files,
a SIGKILLed run restarted finishes without redoing or losing outputs, S3 in and out."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import modelzoo
import numpy as np
import onnxruntime as ort
import pytest

RUNTIME_ROOT = Path(__file__).resolve().parents[1]


def batch(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mlship_runtime.batch", *args],
                          env=_env(env), capture_output=True, text=True, timeout=300, check=False)


def _env(extra: dict[str, str] | None) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("MLSHIP_RUNTIME_")}
    return {**base, "PYTHONPATH": str(RUNTIME_ROOT), "MLSHIP_RUNTIME_INTRA_OP_THREADS": "1",
            **(extra or {})}


def expected(model: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(model))
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def test_npy_npz_jsonl_outputs_match_onnxruntime_and_rerun_skips(models, tmp_path):
    data = tmp_path / "in"
    (data / "day2").mkdir(parents=True)
    rng = np.random.default_rng(7)
    a = rng.standard_normal((70, 4)).astype(np.float32)  # 70 rows: two batches of 64 and 6
    b = rng.standard_normal((3, 4)).astype(np.float32)
    np.save(data / "a.npy", a)
    np.savez(data / "day2" / "b.npz", x=b)
    rows = rng.standard_normal((5, 4)).round(3).tolist()
    (data / "c.jsonl").write_text("".join(json.dumps({"x": row}) + "\n" for row in rows))
    (data / "bad.npy").write_bytes(b"not numpy")
    (data / "notes.txt").write_text("ignored")
    run = batch("--model", str(models["tiny"]), "--input", str(data), "--json")
    assert run.returncode == 1, run.stderr  # bad.npy failed, the rest were written
    summary = json.loads(run.stdout)
    assert summary["schema"] == "mlship_runtime.batch/v1"
    assert (summary["files"], summary["written"], summary["skipped"], summary["failed"],
            summary["rows"]) == (4, 3, 0, 1, 78)
    assert summary["failures"][0]["input"] == str(data / "bad.npy")
    with np.load(data / "a.out.npz") as out:
        np.testing.assert_allclose(out["probabilities"], expected(models["tiny"], a), rtol=1e-5)
    with np.load(data / "day2" / "b.out.npz") as out:
        np.testing.assert_allclose(out["probabilities"], expected(models["tiny"], b), rtol=1e-5)
    lines = [json.loads(line) for line in (data / "c.out.jsonl").read_text().splitlines()]
    want = expected(models["tiny"], np.asarray(rows, dtype=np.float32))
    np.testing.assert_allclose(np.asarray(lines, dtype=np.float32), want, rtol=1e-5, atol=1e-6)
    (data / "bad.npy").unlink()
    again = batch("--model", str(models["tiny"]), "--input", str(data), "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["skipped"] == 3
    assert json.loads(again.stdout)["written"] == 0


def test_sigkilled_run_restarted_finishes_without_redoing_or_losing_outputs(tmp_path):
    model = modelzoo.slow(tmp_path / "slow.onnx", matmuls=12, size=384)
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    count = 120
    for i in range(count):
        np.save(inputs / f"part-{i:03d}.npy", np.full((2, 1), i, dtype=np.float32))
    args = ["--model", str(model), "--input", str(inputs), "--output", str(outputs), "--json"]
    proc = subprocess.Popen([sys.executable, "-m", "mlship_runtime.batch", *args],
                            env=_env(None), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while len(list(outputs.glob("*.out.npz"))) < 5 and proc.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    done = {path.name: path.stat() for path in outputs.glob("*.out.npz")}
    assert 5 <= len(done) < count, "the run must be killed midway"
    rerun = batch(*args)
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout)
    assert (summary["skipped"], summary["written"], summary["failed"]) == (
        len(done), count - len(done), 0)
    for name, stat in done.items():  # not redone: the same file, untouched
        again = (outputs / name).stat()
        assert (again.st_ino, again.st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)
    assert sorted(p.name for p in outputs.iterdir()) == sorted(
        f"part-{i:03d}.out.npz" for i in range(count))  # nothing partial left, nothing lost
    for i in range(count):
        with np.load(outputs / f"part-{i:03d}.out.npz") as out:
            np.testing.assert_array_equal(out["y"], np.full((2, 1), i, dtype=np.float32))


@pytest.mark.s3
def test_s3_inputs_and_outputs_with_a_model_from_s3(moto_s3, models, tmp_path):
    bucket = moto_s3.new_bucket()
    moto_s3.upload_model(bucket, "models/tiny/", models["tiny"])
    client = moto_s3.client()
    arrays = {f"in/batch-{i}.npy": np.full((4, 4), i, dtype=np.float32) for i in range(3)}
    for key, array in arrays.items():
        buffer = io.BytesIO()
        np.save(buffer, array)
        client.put_object(Bucket=bucket, Key=key, Body=buffer.getvalue())
    env = moto_s3.env(MLSHIP_RUNTIME_MODEL=f"s3://{bucket}/models/tiny/",
                      MLSHIP_RUNTIME_CACHE_DIR=str(tmp_path / "cache"))
    with moto_s3.unauthenticated():  # listing in/ and out/: see MotoS3.unauthenticated
        run = batch("--input", f"s3://{bucket}/in/", "--output", f"s3://{bucket}/out/",
                    "--json", env=env)
        rerun = batch("--input", f"s3://{bucket}/in/", "--output", f"s3://{bucket}/out/",
                      "--json", env=env)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["written"] == 3
    for i in range(3):
        body = client.get_object(Bucket=bucket, Key=f"out/batch-{i}.out.npz")["Body"].read()
        with np.load(io.BytesIO(body)) as out:
            np.testing.assert_allclose(out["probabilities"],
                                       expected(models["tiny"], arrays[f"in/batch-{i}.npy"]),
                                       rtol=1e-5)
    assert json.loads(rerun.stdout)["skipped"] == 3
    with moto_s3.unauthenticated():
        missing = batch("--input", f"s3://{bucket}-absent/in/", env=env)
    assert missing.returncode == 11
    assert f"s3://{bucket}-absent: the bucket does not exist" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_model_on_the_command_line_wins_over_a_repository_in_the_env(models, tmp_path):
    """The CronJob of a multi-model app shares the Deployment's env (MLSHIP_RUNTIME_MODELS)
    and names the one model it runs with --model."""
    data = tmp_path / "in"
    data.mkdir()
    x = np.random.default_rng(5).standard_normal((3, 4)).astype(np.float32)
    np.save(data / "x.npy", x)
    repository = json.dumps({"models": [{"name": "other", "path": "/nonexistent.onnx"}]})
    run = batch("--model", str(models["tiny"]), "--input", str(data), "--json",
                env={"MLSHIP_RUNTIME_MODELS": repository})
    assert run.returncode == 0, run.stderr
    with np.load(data / "x.out.npz") as out:
        np.testing.assert_allclose(out["probabilities"], expected(models["tiny"], x), rtol=1e-5)
