#!/usr/bin/env bash
# Create .venv and install brainmm with its test tools. Idempotent: re-runs only when pyproject.toml changes.
# torch is installed first, pinned to the CPU build on this machine's disk; pyproject keeps torch's range open.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH=${BRAINMM_TORCH_SPEC:-torch==2.13.0}
stamp=.venv/.brainmm-installed
want="$(sha256sum pyproject.toml | cut -c1-16) $TORCH"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check "$TORCH"
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]'
echo "$want" > "$stamp"
