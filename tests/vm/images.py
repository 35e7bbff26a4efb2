"""Debian 12 root file systems built with mmdebstrap, cached by package list.

The VM's rootfs (kernel, systemd, Mosquitto, vivid's kmod/v4l-utils) and the container base
(Python and libturbojpeg only) are tarballs under ``~/.cache/focoos-edge-tests``; the file name
carries a hash of the suite and package list, so changing the list builds a new one.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

SUITE = "bookworm"
CACHE = Path(os.environ.get("FOCOOS_EDGE_TEST_CACHE", Path.home() / ".cache/focoos-edge-tests"))
# No python3-systemd on purpose: the VM proves the journald priorities of the plain-stderr path.
VM_PACKAGES = (
    "systemd", "systemd-sysv", "linux-image-amd64", "udev", "dbus", "kmod", "procps", "python3",
    "python3-venv", "libturbojpeg0", "mosquitto", "mosquitto-clients", "v4l-utils",
)
BASE_PACKAGES = ("python3", "python3-venv", "libturbojpeg0", "ca-certificates")


def cache_name(kind: str, packages: tuple[str, ...]) -> str:
    digest = hashlib.sha256(" ".join((SUITE, *sorted(packages))).encode()).hexdigest()[:10]
    return f"{SUITE}-{kind}-{digest}.tar"


def rootfs_tarball(kind: str, packages: tuple[str, ...]) -> tuple[Path, float]:
    """The cached tarball (built now if missing) and the seconds spent building it (0 if cached)."""
    target = CACHE / cache_name(kind, packages)
    if target.is_file():
        return target, 0.0
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    started = time.monotonic()
    subprocess.run(
        ["mmdebstrap", "--quiet", "--variant=apt", "--format=tar", "--include=" + ",".join(packages), SUITE,
         str(partial)], check=True, stdin=subprocess.DEVNULL, timeout=900)
    partial.rename(target)
    return target, time.monotonic() - started


def tools_missing(*tools: str) -> list[str]:
    return [tool for tool in tools if shutil.which(tool) is None]


if __name__ == "__main__":  # build both caches ahead of a test run
    for kind, pkgs in (("vm", VM_PACKAGES), ("base", BASE_PACKAGES)):
        path, spent = rootfs_tarball(kind, pkgs)
        print(f"{path} built in {spent:.0f} s" if spent else f"{path} cached")
