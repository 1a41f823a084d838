"""Byte-exact render output for representative configs (tests/golden/<case>/).

Regenerate with ``pytest tests/render/test_golden.py --update-golden`` and review the diff.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from mlship_testsupport import CASES

GOLDEN = Path(__file__).resolve().parents[1] / "golden"


def _golden_files(case_dir: Path) -> dict[str, str]:
    return {path.relative_to(case_dir).as_posix(): path.read_text(encoding="utf-8")
            for path in sorted(case_dir.rglob("*")) if path.is_file()}


@pytest.mark.parametrize("case", CASES)
def test_render_matches_golden(case: str, render_case, update_golden: bool) -> None:
    bundle = render_case(case)
    case_dir = GOLDEN / case
    if update_golden:
        shutil.rmtree(case_dir, ignore_errors=True)
        for relative, text in bundle.files.items():
            target = case_dir / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
    expected = _golden_files(case_dir)
    assert sorted(bundle.files) == sorted(expected), "run pytest --update-golden and review"
    for relative, text in bundle.files.items():
        assert text == expected[relative], f"{case}/{relative} differs from the golden file"


def test_golden_output_has_no_timestamps() -> None:
    for path in GOLDEN.rglob("*"):
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            assert not re.search(r"20\d\d-\d\d-\d\dT", text), path
