#!/usr/bin/env bash
# Sets up everything the tests need, then lints, type-checks and runs them:
#   scripts/test.sh [pytest args...]
# With FOCOOS_TESTS_PARALLEL=1 and no test selection in the arguments, the platform tests (the
# systemd VM, the container image, arm64 under emulation: about 11 of the suite's minutes, mostly
# qemu and buildah) run in a second pytest beside the others, and a last line adds both up. Off by
# default: on a loaded 2-core host the extra load made timing-sensitive tests fail (3 of 4 runs).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
echo "test: ruff (pyproject.toml [tool.ruff])"
.venv/bin/ruff check focoos_edge tests scripts
echo "test: mypy (pyproject.toml [tool.mypy])"
.venv/bin/mypy

PLATFORM=(tests/test_vm_systemd.py tests/test_container.py tests/test_arm64.py)
selects=0
for arg in "$@"; do
  case "$arg" in
    -k|-m|--deselect|--ignore|--lf|--ff|--sw|tests*|*.py*|*::*) selects=1 ;;
  esac
done
if [ "$selects" = 1 ] || [ "${FOCOOS_TESTS_PARALLEL:-0}" != 1 ]; then
  exec .venv/bin/python -m pytest "$@"
fi

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
echo "test: ${PLATFORM[*]} run beside the rest (output at the end)"
.venv/bin/python -m pytest "$@" --basetemp="$out/tmp-platform" --junitxml="$out/platform.xml" \
  "${PLATFORM[@]}" >"$out/platform.log" 2>&1 &
platform_pid=$!
ignores=()
for f in "${PLATFORM[@]}"; do ignores+=("--ignore=$f"); done
rc=0
.venv/bin/python -m pytest "$@" --basetemp="$out/tmp-rest" --junitxml="$out/rest.xml" "${ignores[@]}" || rc=$?
platform_rc=0
wait "$platform_pid" || platform_rc=$?
echo "test: the platform tests (${PLATFORM[*]}):"
cat "$out/platform.log"
.venv/bin/python scripts/junit_total.py "$out/rest.xml" "$out/platform.xml"
[ "$rc" = 0 ] && rc=$platform_rc
exit "$rc"
