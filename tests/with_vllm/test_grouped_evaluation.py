"""Grouped vLLM evaluation (issue 25): a `geopd batch` of evaluations shares one engine, given
each checkpoint's weights, so the process's memory stays flat, and every result equals the
per-checkpoint evaluation with an engine of its own (what `job_grouping.evaluate: checkpoint`
runs, one job per checkpoint).

Before: every evaluation started an engine and left it allocated. Measured here with the old
code on these tiny models, the resident memory grew by 67 MiB per code evaluation (its 64 MiB
KV cache and the engine) and the traceback hook by one "[rank0]: " prefix per engine.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_model

N = 11                 # checkpoints per architecture
MEMORY_BOUND_MIB = 48  # growth allowed after both paths are warm (a leaked engine here: >= 64)
MATH = {"kind": "math", "samples": 2, "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 8, "limit": 3,
        "kv_cache_gib": 0.0625, "max_model_len": 256}
CODE = {**MATH, "kind": "code", "max_model_len": 192}  # other engine settings: the engine is replaced


@pytest.fixture(scope="module")
def checkpoints(world, tmp_path_factory):
    """N tied (like Qwen3-4B) and N untied (like Qwen3-8B) checkpoints of one shape each, different
    weights, and the code task's data."""
    import torch

    from geopd.engines.models import save_model
    from geopd.world.tasks import code_problems

    root = tmp_path_factory.mktemp("grouped")
    tied = [save_model(make_model(64, seed=100 + i, tie=True), world.tokenizer, root / f"tied-{i}",
                       dtype=torch.float32) for i in range(N)]
    untied = [save_model(make_model(64, seed=200 + i, tie=False), world.tokenizer, root / f"untied-{i}",
                         dtype=torch.float32) for i in range(N)]
    code = root / "code"
    code.mkdir()
    (code / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in code_problems(3, seed=5, split="test")))
    return root, tied, untied, code


def commands(world, checkpoints, out: Path) -> list[list[str]]:
    """A run's evaluations in the workflow's order (benchmark by benchmark): math on the tied
    checkpoints, code on the untied ones (other settings and architecture), then math again on
    two tied ones (the first engine's settings once more): 2N + 2 evaluations, 3 engines."""
    _, tied, untied, code = checkpoints
    math = {**MATH, "name": "math-heldout", "data_dir": str(world.data), "split": "test"}
    code_spec = {**CODE, "name": "code-heldout", "data_dir": str(code), "split": "test"}
    plan = ([(m, math) for m in tied] + [(m, code_spec) for m in untied] + [(tied[3], math), (tied[7], math)])
    return [["evaluate", "--model", str(model), "--benchmark", json.dumps(spec), "--seed", "3",
             "--out", str(out / f"{i:02d}.json"), "--samples", str(out / f"{i:02d}.samples.jsonl"),
             "--threads", "2", "--backend", "vllm"] for i, (model, spec) in enumerate(plan)]


def test_grouped_evaluations_share_one_engine_and_equal_per_checkpoint_results(world, checkpoints, tmp_path):
    from geopd.cli.batch import run_command
    from geopd.evaluate import engine

    grouped = commands(world, checkpoints, tmp_path / "grouped")
    assert len(grouped) >= 20
    (tmp_path / "commands.json").write_text(json.dumps(grouped))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(Path(__file__).parents[2] / "src"),
                                                                   os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run([sys.executable, "-m", "geopd.cli", "batch", "--commands", f"@{tmp_path / 'commands.json'}"],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-6000:]
    log = proc.stderr.splitlines()

    # One engine per run of equal settings: 3 starts (math, code, math again), every other
    # evaluation loaded its checkpoint into the running engine.
    assert sum("geopd evaluate: starting a vLLM engine" in line for line in log) == 3
    assert sum("into the running engine" in line for line in log) == len(grouped) - 3
    assert sum("shutting the engine down" in line for line in log) == 2
    # The traceback hook is not wrapped per engine (torch's "[rank0]: " prefix).
    assert "[rank0]" not in proc.stderr

    # Memory: the resident set after each command (geopd batch's log). After the first code
    # evaluation both paths (lm-eval and the rollout engine) are warm; from there on, across ten
    # checkpoint loads and an engine replaced, it may not grow by more than MEMORY_BOUND_MIB.
    rss = [float(line.rsplit("rss ", 1)[1].split()[0]) for line in log if "geopd batch:" in line and " rss " in line]
    assert len(rss) == len(grouped)
    warm = rss[N]
    print(f"geopd batch: {len(grouped)} evaluations, rss after each (MiB): {rss}; growth from the first "
          f"code evaluation: {max(rss[N:]) - warm:.0f} MiB (bound {MEMORY_BOUND_MIB})")
    assert max(rss[N:]) - warm <= MEMORY_BOUND_MIB, rss

    # The results equal the per-checkpoint evaluation with a fresh engine (started, used once,
    # shut down, as in a job of its own) for the first, middle and last checkpoint of each phase
    # (a fresh engine costs 3-11 s here; all 24 were compared once, equal, when this was written).
    alone = commands(world, checkpoints, tmp_path / "alone")
    compared = sorted({0, N // 2, N - 1, N, N + N // 2, 2 * N - 1, 2 * N, 2 * N + 1})
    engine.close()
    started = engine.counts()["started"]
    for argv_grouped, argv_alone in ((grouped[i], alone[i]) for i in compared):
        assert run_command(argv_alone) == 0
        engine.close()
        out_g, out_a = Path(argv_grouped[argv_grouped.index("--out") + 1]), Path(argv_alone[argv_alone.index("--out") + 1])
        a, g = json.loads(out_a.read_text()), json.loads(out_g.read_text())
        assert g["metrics"] == a["metrics"] and g["n"] == a["n"] == 3
        samples = [out.with_suffix("").with_suffix(".samples.jsonl").read_text() for out in (out_g, out_a)]
        assert samples[0] == samples[1], argv_grouped[2]
    assert engine.counts()["started"] - started == len(compared)
    # Sampling at temperature 1 from different weights: the checkpoints' responses differ, so the
    # equality above is not that of one model's outputs.
    responses = {(tmp_path / "grouped" / f"{i:02d}.samples.jsonl").read_text() for i in range(N)}
    assert len(responses) > N // 2


def test_engine_keeps_the_process_traceback_hook_and_closes(world):
    """Starting and closing engines one after another leaves sys.excepthook as it was (torch wraps
    it at every process-group initialisation), and a closed engine leaves no live engine behind."""
    from geopd.engines import vllm_engine
    from geopd.evaluate import engine

    engine.close()
    hook = sys.excepthook
    spec = {"name": "hook", **MATH}
    for seed in (1, 2):
        e = engine.engine_for(world.student, {**spec, "max_model_len": 256 - 32 * seed}, seed)
        assert sys.excepthook is hook
        assert e.llm in vllm_engine._LIVE
    engine.close()
    assert sys.excepthook is hook and not any(llm is e.llm for llm in vllm_engine._LIVE) and e.llm is None


def test_identity_compares_architecture_and_tokenizer_not_weights(world, checkpoints, tmp_path):
    import shutil

    from geopd.evaluate.engine import identity

    _, tied, untied, _ = checkpoints
    assert identity(tied[0]) == identity(tied[5])          # other weights, same shape: reuse
    assert identity(tied[0]) != identity(untied[0])        # another architecture: a new engine
    assert identity("Qwen/Qwen3-8B") == "name:Qwen/Qwen3-8B"
    other_tok = tmp_path / "other-tokenizer"
    shutil.copytree(tied[0], other_tok)
    cfg = json.loads((other_tok / "tokenizer_config.json").read_text())
    cfg["model_max_length"] = 12345
    (other_tok / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert identity(other_tok) != identity(tied[0])
    config = json.loads((tied[1] / "config.json").read_text())
    config["_name_or_path"] = "/somewhere/else"
    renamed = tmp_path / "renamed"
    shutil.copytree(tied[1], renamed)
    (renamed / "config.json").write_text(json.dumps(config))
    assert identity(renamed) == identity(tied[1])
