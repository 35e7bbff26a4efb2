"""Package selection per distribution: scripts/setup.sh, scripts/install.sh and the Python hint all
read focoos_edge/common/os-packages.tsv; each is run against the os-release of every named system."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from focoos_edge.common.ospackages import package_for

ROOT = Path(__file__).resolve().parent.parent

# The distributions' own /etc/os-release files (the lines that matter, verbatim).
OS_RELEASES = {
    "debian12": 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\nVERSION_ID="12"\n'
                'VERSION="12 (bookworm)"\nVERSION_CODENAME=bookworm\nID=debian\n',
    # Raspberry Pi OS 64-bit ships Debian's file; the 32-bit one says raspbian.
    "raspios-bookworm-armhf": 'PRETTY_NAME="Raspbian GNU/Linux 12 (bookworm)"\nNAME="Raspbian GNU/Linux"\n'
                              'VERSION_ID="12"\nVERSION_CODENAME=bookworm\nID=raspbian\nID_LIKE=debian\n',
    # JetPack 6 is Ubuntu 22.04 (L4T 36).
    "ubuntu2204": 'PRETTY_NAME="Ubuntu 22.04.4 LTS"\nNAME="Ubuntu"\nVERSION_ID="22.04"\n'
                  'VERSION_CODENAME=jammy\nID=ubuntu\nID_LIKE=debian\nUBUNTU_CODENAME=jammy\n',
    "ubuntu2404": 'PRETTY_NAME="Ubuntu 24.04.1 LTS"\nNAME="Ubuntu"\nVERSION_ID="24.04"\n'
                  'VERSION_CODENAME=noble\nID=ubuntu\nID_LIKE=debian\nUBUNTU_CODENAME=noble\n',
    "mint21": 'NAME="Linux Mint"\nVERSION_ID="21.3"\nID=linuxmint\nID_LIKE="ubuntu debian"\n',
}
TURBOJPEG = {"debian12": "libturbojpeg0", "raspios-bookworm-armhf": "libturbojpeg0",
             "ubuntu2204": "libturbojpeg", "ubuntu2404": "libturbojpeg", "mint21": "libturbojpeg"}


def _selection(tmp_path: Path, system: str, *command: str) -> list[str]:
    release = tmp_path / f"{system}.os-release"
    release.write_text(OS_RELEASES[system])
    out = subprocess.run(["bash", *command], cwd=ROOT, env={**os.environ, "OS_RELEASE": str(release)},
                         capture_output=True, text=True, timeout=60, check=True)
    return out.stdout.split()


@pytest.mark.parametrize("system", sorted(OS_RELEASES))
def test_both_scripts_and_the_hint_pick_the_systems_turbojpeg(tmp_path: Path, system: str) -> None:
    installed = _selection(tmp_path, system, "scripts/install.sh", "--print-packages")
    setup = _selection(tmp_path, system, "scripts/setup.sh", "--test", "--print-packages")
    want = TURBOJPEG[system]
    assert installed == ["python3", "python3-venv", want, "python3-systemd"]
    assert setup[:3] == ["python3", "python3-venv", want]
    assert {"mosquitto", "qemu-system-x86", "mmdebstrap", "buildah"} <= set(setup)
    assert package_for("turbojpeg", tmp_path / f"{system}.os-release") == want


def test_an_unknown_system_is_refused_by_the_scripts_and_named_both_ways_by_the_hint(tmp_path: Path) -> None:
    release = tmp_path / "fedora"
    release.write_text('NAME="Fedora Linux"\nID=fedora\nVERSION_ID=40\n')
    out = subprocess.run(["bash", "scripts/setup.sh", "--print-packages"], cwd=ROOT, capture_output=True,
                         text=True, env={**os.environ, "OS_RELEASE": str(release)}, timeout=60)
    assert out.returncode != 0 and "neither Debian nor Ubuntu" in out.stderr
    assert package_for("turbojpeg", release) == "libturbojpeg0 or libturbojpeg"


def test_every_debian_name_exists_in_this_machines_apt_index(tmp_path: Path) -> None:
    """This machine is Debian 12: apt knows every name the Debian column gives (a typo would not be)."""
    if shutil.which("apt-cache") is None or "ID=debian" not in Path("/etc/os-release").read_text():
        pytest.skip("needs a Debian machine with apt")
    names = _selection(tmp_path, "debian12", "scripts/setup.sh", "--test", "--print-packages")
    names += _selection(tmp_path, "debian12", "scripts/install.sh", "--print-packages")
    out = subprocess.run(["apt-cache", "show", "--no-all-versions", *sorted(set(names))], capture_output=True,
                         text=True, timeout=60)
    known = {line.split(":", 1)[1].strip() for line in out.stdout.splitlines() if line.startswith("Package:")}
    assert set(names) <= known, f"unknown to apt: {set(names) - known}"
