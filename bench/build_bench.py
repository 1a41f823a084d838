"""Image build benchmark: warm rebuild after a model-only change, and size over the base.

Builds a small model's image once (warming the layer cache and the wheelhouse), then replaces
the model with a different one several times and times ``mlship build --json`` end to end (the
CLI process included: config, inspection, context assembly, the engine's build). Prints the
median beside the target (under 5 s), then the image's size added over its base image beside
the budget (at most 110 MB), and the layers that carry the size.

Needs a Docker engine and the base image (``.ci/install-docker.sh``; override with
``MLSHIP_TEST_BASE_IMAGE``). Usage: ``python bench/build_bench.py [--runs 3]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from mlship_testsupport import make_model  # noqa: E402

BASE = os.environ.get("MLSHIP_TEST_BASE_IMAGE", "mlship-test/base:bookworm")
REBUILD_TARGET_S = 5.0
BUDGET_MB = 110
MB = 1000 * 1000


def build(project: Path) -> tuple[dict, float]:
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "mlship", "build", "--json"], cwd=project,
                            capture_output=True, text=True, check=False, timeout=900)
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        sys.exit(f"build failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return json.loads(result.stdout), elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    tags: list[str] = []
    with tempfile.TemporaryDirectory() as scratch:
        project = Path(scratch)
        make_model(project / "model.onnx")
        (project / "mlship.yaml").write_text(yaml.safe_dump({
            "name": "bench", "model": {"source": "model.onnx"},
            "image": {"base": BASE, "repository": "mlship-bench/build"}}))
        first, cold = build(project)
        tags += first["tags"]
        times = []
        for run in range(args.runs):
            make_model(project / "model.onnx", weights=16 * (run + 2))  # a new model each run
            doc, elapsed = build(project)
            tags += doc["tags"]
            times.append(elapsed)
        median = statistics.median(times)
        added = doc["added_bytes"] / MB
        print(f"first build (cache as found):     {cold:6.1f} s")
        print(f"warm rebuild, model-only change:  {median:6.1f} s   "
              f"target < {REBUILD_TARGET_S:.0f} s   "
              f"{'OK' if median < REBUILD_TARGET_S else 'MISSED'}"
              f"   ({', '.join(f'{t:.1f}' for t in times)}; "
              f"{doc['cached_steps']}/{doc['steps']} steps cached)")
        print(f"size added over the base:         {added:6.1f} MB  target <= {BUDGET_MB} MB"
              f"   {'OK' if added <= BUDGET_MB else 'MISSED'}   (base {doc['base_image']}: "
              f"{doc['base_size_bytes'] / MB:.1f} MB)")
        for layer in sorted(doc["layers"], key=lambda item: -item["size_bytes"])[:3]:
            if layer["size_bytes"]:
                print(f"    {layer['size_bytes'] / MB:8.1f} MB  {layer['created_by'][:70]}")
    subprocess.run(["docker", "image", "rm", "-f", *sorted(set(tags))], capture_output=True,
                   check=False)


if __name__ == "__main__":
    main()
