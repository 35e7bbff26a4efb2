"""arm64 without arm64 hardware and without touching the kernel's binfmt settings: the demo (the
whole daemon: capture, TurboJPEG, uplink, local ArUco server, MQTT) runs as an aarch64 Python 3.11
process under qemu's user-mode emulator, started explicitly (``qemu-aarch64-static -L ROOT``), with
the aarch64 wheels of every dependency installed by ``pip --platform`` and Debian's arm64 python3
and libturbojpeg0 unpacked by ``mmdebstrap --variant=extract`` (no maintainer scripts, no emulation).

qemu-user-static is fetched with ``apt-get download`` and unpacked, never installed: its package
scripts would register binfmt handlers on the machine.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.vm.images import CACHE, SUITE, tools_missing
from tests.vm.payload import ROOT, requirements, wheelhouse

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
ARM_PACKAGES = "python3.11,libpython3.11-stdlib,libturbojpeg0,libstdc++6,zlib1g"


def _qemu_user() -> Path:
    target = CACHE / "qemu-user" / "usr/bin/qemu-aarch64-static"
    if not target.exists():
        work = CACHE / "qemu-user-download"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        subprocess.run(["apt-get", "download", "qemu-user-static"], cwd=work, check=True, timeout=300,
                       capture_output=True)
        deb = next(work.glob("qemu-user-static_*.deb"))
        subprocess.run(["dpkg-deb", "-x", str(deb), str(CACHE / "qemu-user")], check=True, timeout=300)
        shutil.rmtree(work)
    return target


def _arm_root() -> Path:
    target = CACHE / f"{SUITE}-arm64-extract"
    if not (target / "usr/bin/python3.11").exists():
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        subprocess.run(["mmdebstrap", "--quiet", "--arch=arm64", "--variant=extract", f"--include={ARM_PACKAGES}",
                        SUITE, str(partial)], check=True, timeout=900, stdin=subprocess.DEVNULL)
        partial.rename(target)
    return target


def _arm_site() -> Path:
    """The project's runtime dependencies as aarch64 cp311 wheels (PyTurboJPEG: the pure-Python wheel
    built from its sdist, which PyPI ships only as source)."""
    reqs = [r for r in requirements() if not r.startswith("setuptools")]
    target = CACHE / f"arm64-site-{hashlib.sha256(' '.join(reqs).encode()).hexdigest()[:10]}"
    if not target.is_dir():
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        platforms = [a for p in ("manylinux2014_aarch64", "manylinux_2_17_aarch64", "manylinux_2_28_aarch64")
                     for a in ("--platform", p)]
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--target",
                        str(partial), *platforms, "--python-version", "3.11", "--implementation", "cp",
                        "--only-binary=:all:", "--find-links", str(wheelhouse()), *reqs], check=True, timeout=900)
        partial.rename(target)
    return target


def test_the_demo_runs_as_an_aarch64_process(mosquitto_factory, tmp_path: Path) -> None:
    missing = tools_missing("mmdebstrap", "apt-get", "dpkg-deb")
    if missing or os.geteuid() != 0:
        pytest.skip(f"{', '.join(missing) or 'root'} needed for the arm64 root (scripts/setup.sh --test)")
    qemu, root, site = _qemu_user(), _arm_root(), _arm_site()
    broker = mosquitto_factory()
    started = time.monotonic()
    done = subprocess.run(
        [str(qemu), "-L", str(root), str(root / "usr/bin/python3.11"), "-c",
         "import platform, sys; print('machine', platform.machine()); from focoos_edge.cli import main;"
         " sys.exit(main(sys.argv[1:]))",
         "demo", "--seconds", "15", "--mqtt-port", str(broker.port), "--workdir", str(tmp_path / "demo")],
        capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": f"{site}:{ROOT}"})
    print(f"\narm64 demo under qemu-user: {time.monotonic() - started:.0f} s")
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert "machine aarch64" in done.stdout
    accounting = [line for line in done.stdout.splitlines() if "daemon accounting" in line]
    assert accounting and "delivered 0," not in accounting[0], out[-3000:]
    assert "detection messages" in done.stdout and "aruco_" in done.stdout, out[-3000:]
