#!/usr/bin/env bash
# Create .venv with the pinned CPU environment and the geopd package (idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-sandbox-deps.sh  # the code sandbox's OS packages (bubblewrap, libseccomp)
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.geopd-installed
if [ ! -f "$stamp" ] || [ envs/cpu.txt -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r envs/cpu.txt
  .venv/bin/python -m pip install -q --no-deps -e .
  touch "$stamp"
fi
