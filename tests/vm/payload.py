"""What the VM gets on its second disk: the project's files, a wheelhouse for an offline install by
scripts/install.sh, and a clip with ArUco markers for a file camera."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import tomllib

from tests.vm.images import CACHE

ROOT = Path(__file__).resolve().parents[2]


def project_files() -> list[str]:
    """Tracked and new (not ignored) files of the checkout: what a clone would have."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, check=True, timeout=60).stdout
    return [name for name in out.decode().split("\0") if name and (ROOT / name).is_file()]


def requirements() -> list[str]:
    """The runtime dependencies and the build backend: what an offline `pip install SRC` needs."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return [*project["project"]["dependencies"], *project["build-system"]["requires"]]


def wheelhouse() -> Path:
    """Wheels of every requirement for this Python (3.11 here and in Debian 12), cached by the list."""
    reqs = requirements()
    key = hashlib.sha256("\n".join([sys.version.split()[0], *reqs]).encode()).hexdigest()[:10]
    target = CACHE / f"wheels-py{sys.version_info[0]}{sys.version_info[1]}-{key}"
    if not target.is_dir():
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        # `pip wheel`: the few sdist-only packages become wheels here, where a compiler and network are.
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "-w",
                        str(partial), *reqs], check=True, timeout=900)
        partial.rename(target)
    return target


def fill_source(folder: Path) -> None:
    for name in project_files():
        dest = folder / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, dest)


def fill(folder: Path, clip: Path) -> None:
    """The disk's tree: src/ (the checkout), wheels/, clip.mp4."""
    fill_source(folder / "src")
    shutil.copytree(wheelhouse(), folder / "wheels")
    shutil.copy2(clip, folder / "clip.mp4")


def preinstall_key() -> str:
    """What a pre-installed tree depends on: the wheels and install.sh (not the package's code)."""
    return wheelhouse().name + hashlib.sha256((ROOT / "scripts/install.sh").read_bytes()).hexdigest()[:10]


def preinstall(tree: Path) -> None:
    """Run scripts/install.sh inside ``tree`` with chroot (as install.sh's help says to fill one):
    the venv with every dependency, made at native speed. The VM runs install.sh again, which under
    a running systemd upgrades the package and reloads/enables the unit (TCG unpacks the opencv and
    numpy wheels in about 4 minutes; natively it takes seconds)."""
    stage = tree / "root/preinstall"
    fill_source(stage / "src")
    shutil.copytree(wheelhouse(), stage / "wheels")
    subprocess.run(["chroot", str(tree), "bash", "/root/preinstall/src/scripts/install.sh", "--no-apt",
                    "--wheels", "/root/preinstall/wheels"], check=True, timeout=900, stdin=subprocess.DEVNULL,
                   capture_output=True)
    shutil.rmtree(stage)
