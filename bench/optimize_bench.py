"""`mlship optimize` on real pretrained CNNs, side by side in one run (ratios are the result).

The PP-OCR models shipped in the ``rapidocr-onnxruntime`` wheel (a test extra): the text
detector (DBNet), the direction classifier (MobileNet) and the recogniser (CRNN-like SVTR).
For each model and variant: size ratio (original / variant), speed-up at batch 1 and
throughput ratio at batch 4 (original time / variant time, runs interleaved so machine drift
hits all alike), the largest and mean absolute output deviation, and argmax agreement where
the output is class scores. Inputs are seeded random floats of the given shape; nothing is
written outside a temporary directory.

Usage: ``python bench/optimize_bench.py [--runs 10] [--threads N]``; about a minute.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "runtime"))
from mlship.model.optimize import VARIANTS, Threshold, model_inputs, optimize  # noqa: E402
from mlship.model.probe import ProfileRequest  # noqa: E402

MODELS = {  # file in rapidocr_onnxruntime/models -> generated input shape (-1: 4 rows)
    "ch_PP-OCRv4_det_infer.onnx": "x=-1,3,320,320",
    "ch_ppocr_mobile_v2.0_cls_infer.onnx": "x=-1,3,48,192",
    "ch_PP-OCRv4_rec_infer.onnx": "x=-1,3,48,320",
}


def models_dir() -> Path:
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pip install '.[test]' (rapidocr-onnxruntime ships the models)")
    return Path(next(iter(spec.submodule_search_locations))) / "models"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0,
                        help="pin onnxruntime to this many CPUs via affinity (0: all allowed)")
    args = parser.parse_args()
    if args.threads:
        os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:args.threads]))
    header = (f"{'model':<34} {'variant':<12} {'size':>9} {'smaller':>8} {'speed-up':>9} "
              f"{'thrpt':>7} {'max|Δ|':>9} {'mean|Δ|':>9} {'argmax':>7}")
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as out:
        for name, shape in MODELS.items():
            model = models_dir() / name
            inputs, _ = model_inputs(model, None, ProfileRequest.from_options([shape], None), 4)
            report = optimize(model, Path(out), VARIANTS, inputs, threshold=Threshold(1e9, False),
                              runs=args.runs)
            base = report.original
            print(f"{name:<34} {'original':<12} {base.size_bytes / 2**20:>7.2f}Mi {1:>7.2f}x "
                  f"{base.latency_ms:>7.2f}ms {base.throughput_rows_s:>6.1f}/s")
            for variant in report.variants:
                if variant.status == "failed":
                    print(f"{'':<34} {variant.name:<12} failed: {variant.reason}")
                    continue
                agreement = "" if variant.argmax_agreement is None else \
                    f"{variant.argmax_agreement:.1%}"
                print(f"{'':<34} {variant.name:<12} {variant.size_bytes / 2**20:>7.2f}Mi "
                      f"{variant.size_ratio:>7.2f}x {variant.speedup:>8.2f}x "
                      f"{variant.throughput_ratio:>6.2f}x {variant.max_abs_deviation:>9.3g} "
                      f"{variant.mean_abs_deviation:>9.2g} {agreement:>7}")
    print(f"\n{report.threads} onnxruntime thread(s), {args.runs} interleaved runs; latency at "
          "batch 1, throughput at batch 4; ratios are original/variant (higher is better).")


if __name__ == "__main__":
    main()
