"""Files shipped inside the mlship wheel: templates, the example model, the runtime's sources.

The wheel force-includes the checkout's top-level ``templates/`` and ``examples/`` under
``mlship/``; an editable install or a plain checkout reads them from the repository root.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parent.parent


def _data_dir(name: str) -> Path:
    installed = resources.files("mlship") / name
    if installed.is_dir():
        return Path(str(installed))
    return _CHECKOUT / name


def templates_dir() -> Path:
    return _data_dir("templates")


def examples_dir() -> Path:
    return _data_dir("examples")


def runtime_dist_dir() -> Path:
    """The runtime's ``pyproject.toml`` and ``requirements.lock``: ``runtime/`` in a checkout,
    ``mlship/runtime_dist/`` in the wheel (pyproject.toml force-includes them there)."""
    installed = resources.files("mlship") / "runtime_dist"
    if installed.is_dir():
        return Path(str(installed))
    return _CHECKOUT / "runtime"


def runtime_lock_file() -> Path:
    """The committed lock of the image's runtime dependencies (hashed pins)."""
    return runtime_dist_dir() / "requirements.lock"


def gpu_lock_file() -> Path:
    """The committed lock of the CUDA image: shared pins plus one onnxruntime-gpu line per
    supported release, each with the CUDA/cuDNN majors its wheel's metadata requires."""
    return runtime_dist_dir() / "requirements-gpu.lock"


def example_model() -> Path:
    """The small scikit-learn iris classifier `mlship demo` serves."""
    return examples_dir() / "iris.onnx"
