"""Colocated engines under torchrun (2 gloo processes on CPU): each rank an FSDP2 trainer with its
own external_launcher rollout engine and vLLM teacher in the same process; tensor_parallel 1
(one engine per rank) and 2 (one TP group made of the trainer's two ranks)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def torchrun(tp: int, world, out: Path, port: int) -> list[dict]:
    out.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
           str(HERE / "dist_check.py"), str(tp), str(out), str(world.student), str(world.teacher)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return [json.loads((out / f"rank-{r}.json").read_text()) for r in range(2)]


@pytest.mark.slow
def test_external_launcher_engines_with_fsdp2_tp1_and_tp2(world, tmp_path):
    runs = {tp: torchrun(tp, world, tmp_path / f"tp{tp}", 29700 + tp) for tp in (1, 2)}
    for tp, ranks in runs.items():
        for r in ranks:
            assert r["backend"] == "external_launcher"
            assert r["rollout_gap"] <= 1e-5, (tp, r)     # engine log-probs = the FSDP trainer's
            assert r["teacher_gap"] <= 1e-5, (tp, r)     # vLLM teacher = HF teacher
            assert r["stale_gap"] > 1e-3, (tp, r)        # the optimizer step moved the policy ...
            assert r["pushed_gap"] <= 1e-5, (tp, r)      # ... and the push brought the engine along
    # per-rank prompts and seeds: a TP group draws exactly what its ranks would draw alone
    for a, b in zip(runs[1], runs[2]):
        assert a["sequences"] == b["sequences"]
    assert runs[1][0]["sequences"] != runs[1][1]["sequences"]
