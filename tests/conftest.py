from __future__ import annotations

from hypothesis import HealthCheck, settings

# The test machines are small and shared: judge properties by examples, never by speed.
settings.register_profile("default", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("default")
