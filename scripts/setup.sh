#!/usr/bin/env bash
# Sets up focoos-edge on Debian 12 / Raspberry Pi OS Bookworm / Ubuntu 22.04+:
# the system packages it needs and a virtualenv in .venv with the package installed (editable).
#   scripts/setup.sh          runtime + demo
#   scripts/setup.sh --test   also what the test suite needs (ffmpeg, GStreamer RTSP server, qemu and
#                             mmdebstrap for the systemd VM, buildah for the container image, test extras)
#   scripts/setup.sh [--test] --print-packages   only print the apt packages it would want here
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/os-packages.sh

with_test=0
print_only=0
for arg in "$@"; do
  case "$arg" in
    --test) with_test=1 ;;
    --print-packages) print_only=1 ;;
    *) echo "usage: $0 [--test] [--print-packages]" >&2; exit 2 ;;
  esac
done

# Names per distribution: focoos_edge/common/os-packages.tsv (libturbojpeg0 on Debian, libturbojpeg
# on Ubuntu). runtime: Python, venv, TurboJPEG; demo: pip and the demo's broker; test: ffmpeg and the
# GStreamer RTSP camera, systemd-analyze and /bin/kill for the unit checks, qemu + mmdebstrap for the
# VM with a real systemd (tests/test_vm_systemd.py), buildah for the image (tests/test_container.py).
uses="runtime demo"
[ "$with_test" = 1 ] && uses="$uses test"
mapfile -t pkgs < <(os_packages $uses)
[ "${#pkgs[@]}" -gt 0 ] || { echo "setup: no package list for this system" >&2; exit 1; }
if [ "$print_only" = 1 ]; then
  printf '%s\n' "${pkgs[@]}"
  exit 0
fi

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo=sudo
  echo "setup: installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
extra=""; [ "$with_test" = 1 ] && extra="[test]"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".${extra}"
echo "setup: ready ($(.venv/bin/focoos-edge --version))"
