#!/usr/bin/env bash
# Sets up focoos-edge on Debian 12 / Raspberry Pi OS Bookworm / Ubuntu 22.04+:
# the system packages it needs and a virtualenv in .venv with the package installed (editable).
#   scripts/setup.sh          runtime + demo
#   scripts/setup.sh --test   also what the test suite needs (ffmpeg, GStreamer RTSP server, test extras)
set -euo pipefail
cd "$(dirname "$0")/.."

with_test=0
for arg in "$@"; do
  case "$arg" in
    --test) with_test=1 ;;
    *) echo "usage: $0 [--test]" >&2; exit 2 ;;
  esac
done

# libturbojpeg0: the TurboJPEG library PyTurboJPEG loads; mosquitto: the demo's broker.
pkgs=(python3 python3-venv python3-pip libturbojpeg0 mosquitto mosquitto-clients)
if [ "$with_test" = 1 ]; then
  # ffmpeg makes test clips; Debian's python3 runs the GStreamer RTSP test camera;
  # systemd (systemd-analyze) and procps (/bin/kill) check the unit file.
  pkgs+=(ffmpeg python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base
         gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly systemd procps)
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
