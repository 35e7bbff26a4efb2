#!/usr/bin/env bash
# Sets up everything the tests need, then lints, type-checks and runs them:
#   scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
echo "test: ruff (pyproject.toml [tool.ruff])"
.venv/bin/ruff check focoos_edge tests scripts
echo "test: mypy (pyproject.toml [tool.mypy])"
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
