#!/usr/bin/env bash
# Create .venv-gpu: the environment every job that requests GPUs runs (train, evaluate; config key
# environments.gpu, README "Cluster set-up"): vLLM 0.32.0 on CUDA with its PyTorch 2.13.0 wheel
# (CUDA 13.0) and the project's pins (envs/gpu.txt), geopd installed editable. Run it on a GPU node
# of the cluster, in the checkout the workflow runs from (a shared filesystem):
#
#   srun -p <gpu partition> --gres=gpu:1 -c 8 --mem=32G -t 60 bash scripts/bootstrap-gpu.sh
#
# It first checks the NVIDIA driver: CUDA 13.0 needs 580 or newer, and with an older one the
# wheels install fine but every CUDA call fails. Options:
#   --check-driver     only check the driver (exit 0 when it is new enough)
#   --no-driver-check  build without a GPU here (e.g. on a login node); the GPU nodes' driver
#                      must still be >= 580
# Idempotent: a venv whose stamp is newer than envs/gpu.txt, envs/vllm-base.txt and pyproject.toml
# is left alone. VENV=<dir> builds elsewhere (then set environments.gpu to it).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv-gpu}
MIN_DRIVER=580   # CUDA 13.0's minimum Linux driver (CUDA toolkit release notes: >= 580.65.06)
start=$SECONDS
say() { echo "bootstrap-gpu [$((SECONDS - start))s]: $*" >&2; }
die() { echo "bootstrap-gpu: $*" >&2; exit 1; }

check_driver() {
  if ! command -v nvidia-smi >/dev/null 2>&1; then
    die "no NVIDIA driver here (nvidia-smi not found). Run this on a GPU node, e.g. srun -p <gpu partition> --gres=gpu:1 bash scripts/bootstrap-gpu.sh, or pass --no-driver-check to build the environment without one."
  fi
  local version
  version=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n1 | tr -d ' ') || true
  [ -n "$version" ] || die "nvidia-smi shows no GPU (driver_version is empty): run this on a GPU node, or pass --no-driver-check."
  local major=${version%%.*}
  if ! [[ "$major" =~ ^[0-9]+$ ]]; then
    die "cannot read the NVIDIA driver version from nvidia-smi: '$version'"
  fi
  if [ "$major" -lt "$MIN_DRIVER" ]; then
    die "NVIDIA driver $version is too old: the CUDA 13.0 wheels of PyTorch 2.13 and vLLM 0.32 (envs/gpu.txt) need driver >= $MIN_DRIVER. Ask your cluster's admins for a driver >= $MIN_DRIVER on the GPU nodes (nothing was installed)."
  fi
  say "NVIDIA driver $version (>= $MIN_DRIVER: CUDA 13.0 runs)"
}

case "${1:-}" in
  --check-driver) check_driver; exit 0 ;;
  --no-driver-check) say "not checking the driver: the GPU nodes need >= $MIN_DRIVER" ;;
  "") check_driver ;;
  *) die "unknown option '$1' (--check-driver, --no-driver-check)" ;;
esac

stamp=$VENV/.geopd-installed
if [ -f "$stamp" ] && [ "$stamp" -nt envs/gpu.txt ] && [ "$stamp" -nt envs/vllm-base.txt ] && [ "$stamp" -nt pyproject.toml ]; then
  say "$VENV is up to date"
  exit 0
fi
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV with $("$PY" --version 2>&1)"
  "$PY" -m venv "$VENV"
fi
say "installing envs/gpu.txt (vLLM 0.32.0, CUDA PyTorch and the project's pins; several GB the first time)"
"$VENV/bin/python" -m pip install --upgrade --progress-bar on pip
"$VENV/bin/python" -m pip install --progress-bar on -r envs/gpu.txt
say "installing geopd (editable)"
"$VENV/bin/python" -m pip install --no-deps --progress-bar on -e .
say "checking the install"
"$VENV/bin/python" - <<'PY'
import torch, transformers
import vllm
from geopd.engines.vllm_engine import vllm_version
cuda = torch.cuda.is_available()
print(f"vllm {vllm_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), transformers "
      f"{transformers.__version__}; GPU here: {torch.cuda.get_device_name(0) if cuda else 'none'}")
PY
touch "$stamp"
say "done: set environments.gpu to $VENV if it is not .venv-gpu"
