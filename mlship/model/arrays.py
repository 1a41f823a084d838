""".npy and .npz files a user hands mlship (predict, optimize, baseline inputs), read safely.

numpy trusts a file's header: a shape it declares is allocated before a byte of data is read
(a 100-byte file can ask for terabytes), and a broken file surfaces as EOFError, OverflowError,
MemoryError or BadZipFile as well as ValueError. Here the header is checked against what the
file holds first, and every failure is one BadInputError naming the file.
"""

from __future__ import annotations

import math
import zipfile
from typing import IO, TYPE_CHECKING

import numpy as np

from mlship.errors import BadInputError

if TYPE_CHECKING:
    from pathlib import Path

_BROKEN = (ValueError, OSError, EOFError, OverflowError, MemoryError, zipfile.BadZipFile,
           KeyError, SyntaxError)


def read_npy(path: Path) -> np.ndarray:
    """The one array of a .npy file."""
    try:
        with path.open("rb") as stream:
            _check_header(stream, path.stat().st_size)
        array = np.load(path, allow_pickle=False)
    except _BROKEN as err:
        raise _invalid(path, ".npy array", err) from None
    if not isinstance(array, np.ndarray):  # np.load opens a zip archive whatever the suffix
        raise BadInputError(f"{path}: not a valid .npy array: the file is a .npz archive")
    return array


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of a .npz archive, by name."""
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.infolist():
                if member.filename.endswith(".npy"):
                    with archive.open(member) as stream:
                        _check_header(stream, member.file_size)
        with np.load(path, allow_pickle=False) as loaded:
            return {name: loaded[name] for name in loaded.files}
    except _BROKEN as err:
        raise _invalid(path, ".npz archive of arrays", err) from None


def _check_header(stream: IO[bytes], size: int) -> None:
    """The header parses, names no object dtype, and declares no more data than the file has."""
    from numpy.lib import format as npy

    version = npy.read_magic(stream)
    reader = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
    shape, _, dtype = reader(stream)
    if any(dim < 0 for dim in shape):
        raise ValueError(f"the header declares a negative dimension: {shape}")
    if dtype.hasobject:
        raise ValueError("it holds Python objects, which only pickle can load")
    declared = math.prod(shape) * dtype.itemsize
    available = size - stream.tell()
    if declared > available:
        raise ValueError(f"the header declares shape {shape} of {dtype} ({declared} bytes), "
                         f"but only {available} bytes of data follow")


def _invalid(path: Path, what: str, err: BaseException) -> BadInputError:
    reason = " ".join(str(err).split()) or type(err).__name__
    return BadInputError(f"{path}: not a valid {what}: {reason}")
