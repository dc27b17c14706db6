"""Runs that start from another run's checkpoint (run@step) continue it: weights, Adam moments,
data position and learning-rate schedule; and EffOPD's per-rank state survives a 2-process
resume."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from geopd.data import prepare
from geopd.errors import UserError
from geopd.grid import Grid, spec_json

REPO = Path(__file__).resolve().parents[1]
SLICE = REPO / "tests/configs/slice.yaml"

# The miniature rank16-sft, in the slice's 6-step SFT: projected from step 3 on, and a plain
# continuation of the same point that must retrace the reference exactly.
RUNS = {
    "rank16-sft": {"family": "rank16", "extends": "sft-8b", "init": "sft-8b@3", "w0": "qwen3-8b-base",
                   "projection": {"run": "sft-8b", "step": 3, "rank": 4}, "checkpoints": [6],
                   "diagnostics": "none"},
    "sft-8b-continued": {"family": "sft", "extends": "sft-8b", "init": "sft-8b@3", "checkpoints": [6],
                         "diagnostics": "none"},
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from geopd.train.loop import train
    from geopd.world.build import make_model

    root = tmp_path_factory.mktemp("continue")
    grid = Grid.from_file(SLICE, overrides={"results": str(root), "runs": RUNS})
    for name in ("pretrain-corpus", "sft-demos", "math"):
        prepare(grid.data_spec(name), grid.data_dir(name))
    make_model(grid.model_spec("qwen3-8b-base"), grid.built_model_dir("qwen3-8b-base"), threads=1)
    train(grid.run_spec("sft-8b"), grid.checkpoints_dir("sft-8b"), grid.metrics_file("sft-8b"), threads=1,
          progress=False)
    return grid


def rows(path) -> list[dict]:
    return [json.loads(line) for line in open(path)]


def test_grid_keeps_the_state_other_runs_continue(world):
    from geopd.io.publish import verify_checkpoint

    assert world.run_spec("sft-8b")["keep_state"] == [3]
    state = f"{world.checkpoints_dir('sft-8b')}/state-3"
    assert world.run_spec("rank16-sft")["continues"] == {"run": "sft-8b", "step": 3, "state": state}
    assert "keep_state" not in world.run_spec("opd-8b-t32b") and "continues" not in world.run_spec("opd-8b-t32b")
    assert sorted(p.name for p in Path(world.checkpoints_dir("sft-8b")).iterdir()) == ["state-3", "step-3", "step-6"]
    assert verify_checkpoint(state, deep=True)["kind"] == "state"


def test_continuation_retraces_the_reference_bitwise(world, tmp_path):
    from geopd.train.loop import train

    spec = {**world.run_spec("sft-8b-continued"), "state_dir": str(tmp_path / "state")}
    train(spec, tmp_path / "out", tmp_path / "metrics.jsonl", threads=1, progress=False)
    a = load_file(str(Path(world.checkpoint("sft-8b", 6)) / "model.safetensors"))
    b = load_file(str(tmp_path / "out" / "step-6" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    ref, got = rows(world.metrics_file("sft-8b"))[3:], rows(tmp_path / "metrics.jsonl")
    for key in ("step", "lr", "loss", "epoch"):
        assert [r[key] for r in got] == [r[key] for r in ref], key
    assert [r["epoch"] for r in got] == [s * 16 / 400 for s in (4, 5, 6)]  # batch 16, 400 demos


def test_rank16_run_continues_lr_and_adam_moments(world, tmp_path):
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    from geopd.train.loop import Trainer

    spec = {**world.run_spec("rank16-sft"), "state_dir": str(tmp_path / "state")}
    trainer = Trainer(spec, threads=1, progress=False)
    saved = torch.load(Path(spec["continues"]["state"]) / "optimizer.pt", weights_only=True)
    mine = get_optimizer_state_dict(trainer.model, trainer.optimizer, options=StateDictOptions(full_state_dict=True))
    assert saved["state"].keys() == mine["state"].keys()
    for name, moments in saved["state"].items():
        for k in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(moments[k], mine["state"][name][k]), (name, k)
    assert any(float(m["exp_avg"].abs().sum()) > 0 for m in saved["state"].values())
    trainer.fit()
    ref = rows(world.metrics_file("sft-8b"))[3:]
    got = rows(tmp_path / "state" / "metrics.jsonl")
    assert [r["step"] for r in got] == [4, 5, 6]
    assert [r["lr"] for r in got] == [r["lr"] for r in ref]  # the reference's cosine, not a new warmup


def test_a_missing_kept_state_is_named(world, tmp_path):
    from geopd.train.loop import Trainer

    spec = {**world.run_spec("rank16-sft"), "state_dir": str(tmp_path / "state")}
    spec["continues"] = {**spec["continues"], "state": str(tmp_path / "nowhere")}
    with pytest.raises(UserError, match="rerun sft-8b"):
        Trainer(spec, threads=1, progress=False)


EFFOPD_WORKER = textwrap.dedent("""
    import json, sys
    import torch
    torch.set_num_threads(1)
    import torch.distributed as dist
    from geopd.train.loop import Trainer

    spec, phase, out = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
    trainer = Trainer(spec, threads=1, progress=False)
    if phase == "train":
        trainer.fit()  # the state at the last step (a checkpoint) is kept: it is never published
    torch.save(trainer.extrapolator.base, f"{out}/base-{phase}-{trainer.dist.rank}.pt")
    dist.destroy_process_group()
""")


@pytest.mark.slow
def test_effopd_resume_restores_each_ranks_base(world, tmp_path):
    spec = world.run_spec("opd-8b-t32b")
    spec.update(teacher=world.built_model_dir("qwen3-8b-base"), steps=2, checkpoints=[2],
                state_dir=str(tmp_path / "state"),
                extrapolation={"candidates": 2, "factor_step": 2.0, "validation_prompts": 4})
    script = tmp_path / "worker.py"
    script.write_text(EFFOPD_WORKER)
    for phase in ("train", "resume"):
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                               str(script), spec_json(spec), phase, str(tmp_path)],
                              capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-4000:]
    assert sorted(p.name for p in (tmp_path / "state" / "state-00000002").glob("extra-*")) == \
        ["extra-00000.pt", "extra-00001.pt"]
    bases = {(phase, r): torch.load(tmp_path / f"base-{phase}-{r}.pt") for phase in ("train", "resume")
             for r in (0, 1)}
    for r in (0, 1):
        assert bases["train", r].keys() == bases["resume", r].keys()
        assert all(torch.equal(bases["train", r][k], bases["resume", r][k]) for k in bases["train", r])
    # The two ranks hold different shards: restoring rank 0's on both would not pass above.
    assert any(not torch.equal(bases["train", 0][k], bases["train", 1][k]) for k in bases["train", 0])
