# Sourced by scripts/setup.sh and scripts/install.sh: which apt packages to install on this system.
# The names live in focoos_edge/common/os-packages.tsv (also read by the Python hints); this file
# only picks the column. OS_RELEASE overrides /etc/os-release (tests, inspection).

_os_packages_table() {
  echo "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/focoos_edge/common/os-packages.tsv"
}

# The distribution family of an os-release file: "debian" or "ubuntu"; fails for anything else.
os_family() {
  local file=${1:-${OS_RELEASE:-/etc/os-release}} words word
  [ -r "$file" ] || { echo "os-packages: cannot read $file" >&2; return 1; }
  # os-release is shell-compatible by specification; a subshell keeps its variables out of ours.
  words=$(. "$file" && echo "${ID:-} ${ID_LIKE:-}")
  # ID first (Ubuntu says ID_LIKE=debian), then ID_LIKE for derivatives (Mint: ID_LIKE="ubuntu debian").
  for word in $words; do
    case "$word" in
      ubuntu) echo ubuntu; return 0 ;;
      debian|raspbian) echo debian; return 0 ;;
    esac
  done
  echo "os-packages: $file describes neither Debian nor Ubuntu (ID/ID_LIKE: $words)" >&2
  return 1
}

# Package names for the given uses (runtime install demo test), one per line, in table order.
os_packages() {
  local family
  family=$(os_family) || return 1
  awk -v family="$family" -v uses=" $* " '
    /^# role/ { for (i = 2; i <= NF; i++) if ($i == family) col = i - 1; next }
    /^#/ || NF == 0 { next }
    index(uses, " " $2 " ") { print $col }
  ' "$(_os_packages_table)"
}
