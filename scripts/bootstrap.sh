#!/usr/bin/env bash
# Create .venv with the pinned CPU environment and the geopd package (idempotent).
# Not quiet: a cold machine fetches ~320 MB of wheels (torch CPU alone ~190 MB) and installs ~2 GB;
# pip's own lines show what it fetches and installs, and the total time is printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-sandbox-deps.sh  # the code sandbox's OS packages (bubblewrap, libseccomp)
PY=${PYTHON:-python3}
say() { echo "bootstrap: $*" >&2; }
if [ ! -x .venv/bin/python ]; then
  say "creating .venv with $("$PY" --version 2>&1)"
  "$PY" -m venv .venv
fi
stamp=.venv/.geopd-installed
if [ ! -f "$stamp" ] || [ envs/cpu.txt -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  say "upgrading pip"
  .venv/bin/python -m pip install --upgrade --progress-bar on pip
  say "installing the pinned CPU environment (envs/cpu.txt): $(grep -cv '^\s*\(#\|$\)' envs/cpu.txt) packages and their dependencies"
  .venv/bin/python -m pip install --progress-bar on -r envs/cpu.txt
  say "installing geopd (editable)"
  .venv/bin/python -m pip install --no-deps --progress-bar on -e .
  touch "$stamp"
  say "done in $((SECONDS / 60)) min $((SECONDS % 60)) s"
else
  say ".venv is up to date (envs/cpu.txt and pyproject.toml unchanged)"
fi
