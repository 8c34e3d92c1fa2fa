"""The Sigma rules and the SIEM-side setup reach an installed package, where the code looks."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from forwarder import resources
from tests.unit.test_deploy import dockerfile

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ("detections/sigma", "siem")


def _files(folder: str) -> set[str]:
    return {
        str(path.relative_to(ROOT))
        for path in (ROOT / folder).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "-w",
            str(out),
            str(ROOT),
        ],
        check=True,
    )
    [built] = out.glob("*.whl")
    return zipfile.ZipFile(built)


def test_the_wheel_carries_every_rule_and_setup_file_under_share(wheel: zipfile.ZipFile) -> None:
    prefix = "/data/share/aha-siem/"
    installed = {name.split(prefix, 1)[1] for name in wheel.namelist() if prefix in name}
    expected = set().union(*(_files(folder) for folder in SHIPPED))
    assert expected - installed == set()
    assert any(name.startswith("detections/sigma/") for name in installed)


def test_an_installed_package_looks_under_its_prefix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # site-packages: no pyproject.toml beside the package, so not a checkout.
    monkeypatch.setattr(resources, "CHECKOUT", tmp_path / "site-packages")
    monkeypatch.setattr(resources, "INSTALLED", tmp_path / "share" / "aha-siem")
    assert resources.shipped("detections", "sigma") == tmp_path / "share/aha-siem/detections/sigma"
    assert resources.shipped("siem") == tmp_path / "share/aha-siem/siem"


def test_a_checkout_uses_its_own_files() -> None:
    assert resources.shipped("detections", "sigma") == ROOT / "detections" / "sigma"
    assert resources.shipped("siem") == ROOT / "siem"


def test_the_image_builds_its_wheel_with_the_shipped_files() -> None:
    copied = {
        i["value"].split()[0]
        for i in dockerfile().structure
        if i["instruction"] == "COPY" and "--from" not in i["value"]
    }
    assert {"forwarder", *SHIPPED} <= copied
