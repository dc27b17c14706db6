#!/usr/bin/env bash
# Set up, then run the miniature grid end to end on this machine (CPU, offline) and build the
# HTML report; last, the wall time per rule (scripts/bench_miniature.py). Extra arguments go to
# snakemake (e.g. -n, --forcerun train).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export PATH="$PWD/.venv/bin:$PATH"
snakemake --profile workflow/profiles/local "$@"
case " $* " in
  *" -n "*|*" --dry-run "*) ;;
  *) snakemake --profile workflow/profiles/local --report results/report.html
     python scripts/bench_miniature.py ;;
esac
