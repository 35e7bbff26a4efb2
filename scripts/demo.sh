#!/usr/bin/env bash
# Sets up focoos-edge, then runs the demo: scripts/demo.sh [--seconds N] ...
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/focoos-edge demo "$@"
