#!/usr/bin/env bash
# ruff check, ruff format --check, mypy (strict) and shellcheck; --fix applies ruff's fixes first.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
sync_env
if [ "${1:-}" = "--fix" ]; then
  .venv/bin/ruff check --fix .
  .venv/bin/ruff format .
fi
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/shellcheck -x scripts/*.sh .ci/run .githooks/pre-commit
