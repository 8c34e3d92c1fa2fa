"""The core imports no Faust and no mode: render, backfill and the unit tests use it without them."""

from __future__ import annotations

import subprocess
import sys

MODULES = [
    "forwarder.core",
    "forwarder.core.normalize",
    "forwarder.core.richtext",
    "forwarder.core.users",
    "forwarder.core.dedupe",
    "forwarder.core.window",
    "forwarder.core.oversize",
]


def test_importing_the_core_loads_neither_faust_nor_mode() -> None:
    code = (
        "import sys\n"
        + "".join(f"import {module}\n" for module in MODULES)
        + "print(sorted({n.split('.')[0] for n in sys.modules} & {'faust', 'mode'}))"
    )
    found = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert found == "[]"


def test_render_and_backfill_use_the_core_without_faust() -> None:
    code = (
        "import sys\nimport forwarder.render, forwarder.backfill.wrap, forwarder.backfill.seen\n"
        "print(sorted({n.split('.')[0] for n in sys.modules} & {'faust', 'mode'}))"
    )
    found = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert found == "[]"
