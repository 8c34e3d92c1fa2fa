"""Files the project ships beside its code: the Sigma rules and the SIEM-side setup.

In a checkout they are at the top of the tree (`detections/sigma/`, `siem/`); an installed
package (a wheel, the container image) has them under `<prefix>/share/aha-siem/`, where
pyproject.toml's data-files puts them.
"""

from __future__ import annotations

import sys
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]
INSTALLED = Path(sys.prefix) / "share" / "aha-siem"


def shipped(*parts: str) -> Path:
    """The folder `parts` of the shipped files: the checkout's if there is one, else the
    installed copy (returned even when missing, so that an error can name where it looked)."""
    in_checkout = CHECKOUT.joinpath(*parts)
    if (CHECKOUT / "pyproject.toml").is_file() and in_checkout.exists():
        return in_checkout
    return INSTALLED.joinpath(*parts)
