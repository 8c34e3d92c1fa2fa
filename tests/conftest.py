from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings

from tests import golden

# The test machines are small and shared: judge properties by examples, never by speed.
settings.register_profile("default", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("default")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        help="rewrite tests/golden/ from the current outputs (review the diff before committing)",
    )


def pytest_configure(config: pytest.Config) -> None:
    golden.UPDATE["enabled"] = bool(config.getoption("--update-golden"))
