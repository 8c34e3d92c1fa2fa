"""Golden files: expected outputs checked in beside the tests; `pytest --update-golden` rewrites them."""

from __future__ import annotations

import difflib
from pathlib import Path

GOLDEN = Path(__file__).parent / "golden"
UPDATE = {"enabled": False}


def assert_golden(relative: str, actual: str) -> None:
    """Compare `actual` with tests/golden/<relative>, showing a unified diff when they differ."""
    path = GOLDEN / relative
    if UPDATE["enabled"]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual, encoding="utf-8")
        return
    if not path.exists():
        raise AssertionError(f"no golden file {path}; run `pytest --update-golden` and review it")
    expected = path.read_text(encoding="utf-8")
    if actual != expected:
        diff = "".join(
            difflib.unified_diff(
                expected.splitlines(keepends=True),
                actual.splitlines(keepends=True),
                fromfile=f"golden/{relative}",
                tofile="actual",
            )
        )
        raise AssertionError(f"output differs from golden/{relative}:\n{diff}")
