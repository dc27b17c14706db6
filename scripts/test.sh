#!/usr/bin/env bash
# Set up, then run the whole test suite (CPU only; brings up a local Slurm cluster if it can).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
# --- code sandbox: bubblewrap and libseccomp (OS packages; owner: the sandbox helper) ---
bash scripts/install-sandbox-deps.sh
export PATH="$PWD/.venv/bin:$PATH"
exec python -m pytest -ra "$@"
