#!/usr/bin/env bash
# Installs focoos-edge as a systemd service on Debian 12 / Raspberry Pi OS Bookworm / Ubuntu 22.04+
# (Jetson): x86-64 and arm64; armhf only where wheels exist (see docs/operations.md).
#
#   sudo scripts/install.sh              install or upgrade (idempotent; never overwrites the config)
#   sudo scripts/install.sh --uninstall  remove the program and the unit; keep config, secrets, spool
#   sudo scripts/install.sh --purge      remove everything, config, secrets and spool included
#
# Options:
#   --root DIR    install under DIR instead of / (tests, inspection). Nothing outside DIR is touched:
#                 no apt, no systemctl. The venv's scripts name DIR/opt/... inside, so the tree works
#                 in place; to fill a chroot, run this script inside the chroot.
#   --no-apt      do not install system packages (they must be there already)
#   --python PY   interpreter for the venv (default: python3, Debian's)
#   --wheels DIR  install offline from the wheels in DIR (pip --no-index --find-links DIR)
#   --print-packages  print the apt packages this system would get (names differ per distribution)
#
# Layout: /opt/focoos-edge/venv (program), /opt/focoos-edge/doc, /etc/systemd/system/focoos-edge.service,
# /etc/focoos-edge/{config.yaml,environment,credentials/}, /var/lib/focoos-edge (spool, made by systemd).
set -euo pipefail
umask 022

src=$(cd "$(dirname "$0")/.." && pwd)
root=""
use_apt=1
python=python3
action=install
wheels=""

usage() {
  sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

while [ $# -gt 0 ]; do
  case "$1" in
    --root) [ $# -ge 2 ] || usage; root=$2; shift ;;
    --root=*) root=${1#--root=} ;;
    --no-apt) use_apt=0 ;;
    --python) [ $# -ge 2 ] || usage; python=$2; shift ;;
    --wheels) [ $# -ge 2 ] || usage; wheels=$(cd "$2" && pwd); shift ;;
    --print-packages) action=print-packages ;;
    --uninstall) action=uninstall ;;
    --purge) action=purge ;;
    -h|--help) usage ;;
    *) echo "install.sh: unknown option $1" >&2; usage ;;
  esac
  shift
done

if [ -n "$root" ]; then
  mkdir -p "$root"
  root=$(cd "$root" && pwd)
  [ "$root" != / ] || root=""
fi
# apt would change the host, not the tree under --root.
[ -z "$root" ] || use_apt=0
R=$root
OPT=$R/opt/focoos-edge
VENV=$OPT/venv
UNIT=$R/etc/systemd/system/focoos-edge.service
DROPIN=$R/etc/systemd/system/focoos-edge.service.d
ETC=$R/etc/focoos-edge
STATE_DIRS=("$R/var/lib/focoos-edge" "$R/var/lib/private/focoos-edge")

say() { echo "install.sh: $*"; }
warn() { echo "install.sh: warning: $*" >&2; }
die() { echo "install.sh: $*" >&2; exit 1; }

# systemctl only for the running system: not for --root, not where PID 1 is another init.
systemd_running() { [ -z "$root" ] && [ -d /run/systemd/system ]; }

if [ "$action" != print-packages ] && [ -z "$root" ] && [ "$(id -u)" -ne 0 ]; then
  die "run it as root (sudo $0), or use --root DIR"
fi

arch=$(dpkg --print-architecture 2>/dev/null || uname -m)

. "$src/scripts/os-packages.sh"

install_packages() {
  # python3-venv: the venv; libturbojpeg0 (Debian) / libturbojpeg (Ubuntu): what PyTurboJPEG loads;
  # python3-systemd: journald fields (CAMERA, FRAME_ID) without compiling systemd-python on the box.
  local pkgs missing=() p
  mapfile -t pkgs < <(os_packages runtime install)
  [ "${#pkgs[@]}" -gt 0 ] || die "no package list for this system (see focoos_edge/common/os-packages.tsv)"
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ "${#missing[@]}" -eq 0 ] && return
  say "apt: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

check_wheels() {
  case "$arch" in
    amd64|x86_64|arm64|aarch64) ;;
    armhf|armv7l)
      # PyPI has no armv7l wheels of opencv-python-headless, numpy or PyYAML.
      warn "armhf: opencv-python-headless, numpy and PyYAML have no armv7l wheels on PyPI; Raspberry Pi OS" \
           "gets them from piwheels.org (preset in /etc/pip.conf), elsewhere pip builds them (hours)" ;;
    *) warn "untested architecture $arch" ;;
  esac
}

make_venv() {
  # A venv made by another Python (a release upgrade) is rebuilt; its packages come back below.
  local want have
  want=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])') || die "$python does not run"
  have=$(sed -n 's/^version *= *\([0-9]*\.[0-9]*\).*/\1/p' "$VENV/pyvenv.cfg" 2>/dev/null || true)
  if [ -e "$VENV" ] && { [ "$have" != "$want" ] || ! "$VENV/bin/python" -c "" 2>/dev/null; }; then
    say "venv made by Python ${have:-?}, now $want: recreating $VENV"
    rm -rf -- "$VENV"
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV"
    "$python" -m venv "$VENV"
  fi
  # Built from a copy: pip builds in the source folder and would leave build/ in the checkout.
  local stage
  stage=$(mktemp -d)
  cp -r "$src/pyproject.toml" "$src/README.md" "$src/LICENSE" "$src/focoos_edge" "$stage/"
  find "$stage" -name __pycache__ -prune -exec rm -rf {} +
  say "installing focoos-edge from $src into $VENV"
  local offline=()
  [ -z "$wheels" ] || offline=(--no-index --find-links "$wheels")
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "${offline[@]}" --upgrade "$stage" \
    || { rm -rf -- "$stage"; die "pip install failed"; }
  rm -rf -- "$stage"
  link_journal_bindings
}

link_journal_bindings() {
  # Debian's python3-systemd is built for Debian's python3; expose that one package (not all of
  # dist-packages) to a venv made from the same interpreter.
  local pkg=/usr/lib/python3/dist-packages/systemd pth link_dir
  link_dir=$OPT/journal
  pth=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/focoos_edge_journal.pth
  rm -f -- "$pth"; rm -rf -- "$link_dir"
  [ -d "$pkg" ] || { say "python3-systemd not installed: logs go to the journal as plain lines"; return 0; }
  mkdir -p "$link_dir" && ln -s "$pkg" "$link_dir/systemd"
  echo "$link_dir" > "$pth"
  if ! "$VENV/bin/python" -c "from systemd import journal" 2>/dev/null; then
    warn "python3-systemd does not load in the venv (another Python?): logs go to the journal as plain lines"
    rm -f -- "$pth"; rm -rf -- "$link_dir"
  fi
}

install_files() {
  install -d -m 0755 "$OPT/doc" "$(dirname "$UNIT")"
  install -m 0644 "$src/README.md" "$src/docs/operations.md" "$src/config.example.yaml" "$OPT/doc/"
  install -m 0644 "$src/systemd/focoos-edge.service" "$UNIT"
  if [ "$arch" = armhf ]; then
    # libjpeg-turbo on 32-bit ARM finds NEON through /proc/cpuinfo, which ProcSubset=pid hides.
    install -d -m 0755 "$DROPIN"
    printf '[Service]\n# install.sh: libjpeg-turbo looks for NEON in /proc/cpuinfo on armhf\nProcSubset=all\n' \
      > "$DROPIN/10-armhf-cpuinfo.conf"
  fi
  # The service runs as a dynamic user: it must be able to read the config (no secrets in it).
  install -d -m 0755 "$ETC"
  if [ -e "$ETC/config.yaml" ]; then
    say "keeping $ETC/config.yaml"
  else
    # The example reads the API key from the environment; a service takes it from its credential.
    grep -q '^  api_key: \${FOCOOS_API_KEY}$' "$src/config.example.yaml" \
      || die "config.example.yaml has no 'api_key: \${FOCOOS_API_KEY}' line to point at the credential"
    sed 's/^  api_key: \${FOCOOS_API_KEY}$/  api_key_file: focoos_api_key   # \/etc\/focoos-edge\/credentials\/focoos_api_key/' \
      "$src/config.example.yaml" > "$ETC/config.yaml"
    chmod 0644 "$ETC/config.yaml"
    say "wrote $ETC/config.yaml (edit it: cameras, model, broker)"
  fi
  if [ ! -e "$ETC/environment" ]; then
    install -m 0600 /dev/null "$ETC/environment"
    printf '%s\n' "# VAR=value lines for \${VAR} references in config.yaml (read by systemd as root)." \
      "# CAMERA_PASSWORD=..." > "$ETC/environment"
  fi
  install -d -m 0700 "$ETC/credentials"
  cat > "$ETC/credentials/README" <<'EOF'
Secrets for focoos-edge, one per file, readable by root only (this folder is 0700).
systemd copies them into the service's $CREDENTIALS_DIRECTORY at start (LoadCredential=):

  focoos_api_key   the Focoos HUB API key         config: inference.api_key_file: focoos_api_key
  mqtt_password    the MQTT broker's password     config: mqtt.password_file: mqtt_password

Write one with:  sudo install -m 0600 /dev/stdin /etc/focoos-edge/credentials/focoos_api_key
then:            sudo systemctl restart focoos-edge
A missing file is passed as an empty credential; the config check says so if the config uses it.
Other secrets (e.g. an MQTT client key: tls.key_file: mqtt_client_key) need a drop-in line:
  LoadCredential=mqtt_client_key:/etc/focoos-edge/credentials/mqtt_client_key
EOF
  chmod 0644 "$ETC/credentials/README"
}

check_runtime() {
  "$VENV/bin/focoos-edge" --version >/dev/null || die "$VENV/bin/focoos-edge does not run"
  "$VENV/bin/python" -c "import turbojpeg; turbojpeg.TurboJPEG()" 2>/dev/null \
    || warn "libturbojpeg is not loadable: install it with apt-get install $(os_packages runtime | grep turbojpeg || echo libturbojpeg0)"
}

do_install() {
  check_wheels
  [ "$use_apt" = 1 ] && install_packages
  make_venv
  install_files
  check_runtime
  if systemd_running; then
    systemctl daemon-reload
    systemctl enable focoos-edge.service >/dev/null 2>&1
    if systemctl is-active --quiet focoos-edge.service; then
      say "restarting the running service on the new version"
      systemctl restart focoos-edge.service
    fi
  else
    say "not the running system (or PID 1 is not systemd): skipped systemctl daemon-reload/enable"
  fi
  say "installed $("$VENV/bin/focoos-edge" --version) in ${root:-/}"
  say "next: edit $ETC/config.yaml, put the API key in $ETC/credentials/focoos_api_key (0600):"
  say "      sudo install -m 0600 /dev/stdin $ETC/credentials/focoos_api_key"
  say "then: sudo $VENV/bin/focoos-edge check-config -c $ETC/config.yaml"
  say "      sudo systemctl start focoos-edge   (docs: $OPT/doc/operations.md)"
}

do_uninstall() {
  if systemd_running; then
    systemctl disable --now focoos-edge.service >/dev/null 2>&1 || true
  fi
  rm -f -- "$UNIT" "$DROPIN/10-armhf-cpuinfo.conf"
  rmdir -- "$DROPIN" 2>/dev/null || true  # drop-ins of your own stay (and keep the folder)
  rm -rf -- "$OPT"
  if [ "$action" = purge ]; then
    rm -rf -- "$DROPIN" "$ETC" "${STATE_DIRS[@]}"
    say "purged program, unit, config, credentials and spool"
  else
    say "removed program and unit; kept $ETC and /var/lib/focoos-edge (--purge removes them)"
  fi
  if systemd_running; then
    systemctl daemon-reload
  fi
}

case "$action" in
  print-packages) os_packages runtime install ;;
  install) do_install ;;
  uninstall|purge) do_uninstall ;;
esac
