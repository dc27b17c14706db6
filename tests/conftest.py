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


# tests/vllm needs vLLM, which lives in its own venv (scripts/bootstrap-vllm.sh; scripts/test.sh
# runs that folder there): elsewhere it is not collected at all, rather than skipped.
import importlib.util  # noqa: E402

collect_ignore = [] if importlib.util.find_spec("vllm") else ["vllm"]
