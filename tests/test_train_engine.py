"""The training engine end to end on tiny models: every method trains, kill-and-resume is
bitwise, bad input stops early with a message, and 2-process FSDP2 matches 1 process."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from geopd.data import prepare
from geopd.errors import UserError
from geopd.grid import Grid
from geopd.spec import spec_json

REPO = Path(__file__).resolve().parents[1]
SLICE = REPO / "tests/configs/slice.yaml"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Data, a tiny base, an SFT anchor and a teacher, made once for the module."""
    from geopd.world.build import make_model
    from geopd.train.loop import train

    root = tmp_path_factory.mktemp("world")
    grid = Grid.from_file(SLICE, overrides={"results": str(root)})
    for name in grid.datasets:
        prepare(grid.data_spec(name), grid.data_dir(name))
    for name in ("qwen3-8b-base", "qwen3-32b-tbase", "qwen3-32b"):
        make_model(grid.model_spec(name), grid.built_model_dir(name), threads=1)
    spec = grid.run_spec("sft-8b")
    train(spec, grid.checkpoints_dir("sft-8b"), grid.metrics_file("sft-8b"), threads=1, progress=False)
    return grid


def train_cmd(spec, out: Path, *extra) -> list[str]:
    return [sys.executable, "-m", "geopd.cli", "train", "--spec", spec_json(spec), "--out", str(out), "--metrics",
            str(out) + ".metrics.jsonl", "--threads", "1", "--no-progress", *extra]


def run_cli(spec, out: Path, env_extra=None, check=True, extra=()):
    env = {**os.environ, **(env_extra or {})}
    proc = subprocess.run(train_cmd(spec, out, *extra), capture_output=True, text=True, env=env, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def weights(ckpt_dir: Path) -> dict:
    return load_file(str(ckpt_dir / "model.safetensors"))


def respec(grid, run, tmp_path, **changes):
    spec = grid.run_spec(run).to_dict()
    spec["state_dir"] = str(tmp_path / f"{run}.state")
    spec.update(changes)
    return spec


@pytest.mark.parametrize("run", ["sft-8b", "opd-8b-t32b", "rlvr-8b"])
def test_every_method_trains_and_logs(world, tmp_path, run):
    spec = respec(world, run, tmp_path)
    out = tmp_path / run
    run_cli(spec, out)
    assert sorted(p.name for p in out.iterdir()) == [f"step-{s}" for s in sorted(spec["checkpoints"], key=str)]
    rows = [json.loads(l) for l in open(str(out) + ".metrics.jsonl")]
    assert [r["step"] for r in rows] == list(range(spec["start_step"] + 1, spec["steps"] + 1))
    keys = {"loss", "grad_norm", "tokens_per_s", "lr"}
    if run != "sft-8b":
        keys |= {"entropy", "updates", "samples"} | ({"mean_r_t", "kl_k3"} if run.startswith("opd") else {"reward"})
    assert keys <= set(rows[-1])
    if run.startswith("opd"):  # 4 prompts x 2 samples, global_batch_size 4 samples: 2 updates a step
        assert {(r["samples"], r["updates"]) for r in rows} == {(8, 2)}
    assert not Path(spec["state_dir"]).exists()  # resume state dropped after a clean finish


# The paper's engine on one process: FSDP2 with bf16 compute over fp32 masters, activation
# checkpointing, token-budget micro-batches, lm_head in chunks.
PAPER_ENGINE = {"param_dtype": "bfloat16", "reduce_dtype": "float32", "activation_checkpointing": True,
                "micro_batch_tokens": 128, "logprob_chunk_tokens": 32}


@pytest.mark.parametrize("run, kill_at, engine", [
    pytest.param("sft-8b", 5, None, id="sft"), pytest.param("opd-8b-t32b", 3, None, id="opd"),
    pytest.param("opd-8b-t32b", 3, PAPER_ENGINE, id="opd-paper-engine", marks=pytest.mark.slow)])
def test_killed_run_resumes_bitwise(world, tmp_path, run, kill_at, engine):
    extra = {"engine": engine} if engine else {}
    ref_spec = respec(world, run, tmp_path / "ref", **extra)
    run_cli(ref_spec, tmp_path / "ref" / "out")
    spec = respec(world, run, tmp_path / "killed", **extra)
    proc = run_cli(spec, tmp_path / "killed" / "out", {"GEOPD_FAULT_KILL_AT_STEP": str(kill_at)}, check=False)
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed" / "out").exists()  # nothing that looks like a finished output
    run_cli(spec, tmp_path / "killed" / "out")  # the retry
    for step in spec["checkpoints"]:
        a = weights(tmp_path / "ref" / "out" / f"step-{step}")
        b = weights(tmp_path / "killed" / "out" / f"step-{step}")
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (step, k)
    ref_rows = [json.loads(l) for l in open(tmp_path / "ref" / "out.metrics.jsonl")]
    rows = [json.loads(l) for l in open(tmp_path / "killed" / "out.metrics.jsonl")]
    assert [r["loss"] for r in rows] == [r["loss"] for r in ref_rows]


def test_sigterm_saves_state_and_retry_continues(world, tmp_path):
    spec = respec(world, "sft-8b", tmp_path)
    proc = run_cli(spec, tmp_path / "out", {"GEOPD_FAULT_SIGTERM_AT_STEP": "2"}, check=False)
    assert proc.returncode == 75, proc.stderr[-2000:]
    states = sorted(Path(spec["state_dir"]).glob("state-*"))
    assert [s.name for s in states] == ["state-00000002"]
    proc = run_cli(spec, tmp_path / "out")
    assert "resumed" in proc.stdout + proc.stderr


def test_early_signal_usr1_saves_state_and_retry_continues(world, tmp_path):
    """USR1, Slurm's early signal before a time limit (sbatch --signal), stops as SIGTERM does."""
    spec = respec(world, "sft-8b", tmp_path)
    proc = run_cli(spec, tmp_path / "out", {"GEOPD_FAULT_USR1_AT_STEP": "2"}, check=False)
    assert proc.returncode == 75 and "signal 10: saving state after step 2" in proc.stderr, proc.stderr[-2000:]
    assert [s.name for s in Path(spec["state_dir"]).glob("state-*")] == ["state-00000002"]
    assert "resumed sft-8b" in run_cli(spec, tmp_path / "out").stderr


def _catches_usr1(pid: int) -> bool:
    """Whether process `pid` has a handler for SIGUSR1 (/proc/<pid>/status SigCgt, bit 10 - 1)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = int(next(l for l in status.splitlines() if l.startswith("SigCgt:")).split()[1], 16)
    return bool(caught >> (signal.SIGUSR1 - 1) & 1)


def test_a_signal_while_starting_up_stops_after_the_first_step(world, tmp_path):
    """`geopd train` keeps a stop signal that arrives before its loop (torch loading, a 32B
    teacher's engine starting) instead of dying of it or losing it: one step, a state, exit 75."""
    import time

    spec = respec(world, "sft-8b", tmp_path)
    proc = subprocess.Popen(train_cmd(spec, tmp_path / "out"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 60
    while not _catches_usr1(proc.pid) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGUSR1)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 75, err[-2000:]
    assert "signal 10: saving state after step 1" in err, err[-2000:]  # noted before any step ran
    assert [s.name for s in Path(spec["state_dir"]).glob("state-*")] == ["state-00000001"]


def test_states_saved_by_wall_clock_bound_what_a_kill_loses(world, tmp_path):
    """--state-every-min: a state between checkpoints, so a node failure loses at most that much
    wall clock; the retry resumes from it and ends bitwise where an uninterrupted run does."""
    ref = respec(world, "sft-8b", tmp_path / "ref")
    run_cli(ref, tmp_path / "ref" / "out")
    spec = respec(world, "sft-8b", tmp_path / "killed")
    assert spec["checkpoints"] == [3, 6]  # a kill at step 5 falls between checkpoints
    every_step = ["--state-every-min", "1e-9"]  # the interval has passed after every step
    proc = run_cli(spec, tmp_path / "killed" / "out", {"GEOPD_FAULT_KILL_AT_STEP": "5"}, check=False, extra=every_step)
    assert proc.returncode == -signal.SIGKILL
    assert [s.name for s in Path(spec["state_dir"]).glob("state-*")] == ["state-00000004"]
    proc = run_cli(spec, tmp_path / "killed" / "out", extra=every_step)
    assert "(step 4)" in proc.stderr, proc.stderr[-2000:]
    for step in spec["checkpoints"]:
        a, b = weights(tmp_path / "ref" / "out" / f"step-{step}"), weights(tmp_path / "killed" / "out" / f"step-{step}")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), step
    # by default (every 30 min) a kill between checkpoints finds the last checkpoint's state
    spec = respec(world, "sft-8b", tmp_path / "default")
    run_cli(spec, tmp_path / "default" / "out", {"GEOPD_FAULT_KILL_AT_STEP": "5"}, check=False)
    assert [s.name for s in Path(spec["state_dir"]).glob("state-*")] == ["state-00000003"]


def test_state_of_other_settings_is_not_resumed(world, tmp_path):
    """Snakemake reruns a run whose settings changed; the state an earlier attempt left was
    trained under the old settings: the run starts over. A new export cadence alone resumes."""
    spec = respec(world, "sft-8b", tmp_path)
    assert run_cli(spec, tmp_path / "out", {"GEOPD_FAULT_SIGTERM_AT_STEP": "2"}, check=False).returncode == 75
    cadence = {**spec, "checkpoints": spec["checkpoints"][-1:]}
    proc = run_cli(cadence, tmp_path / "out", {"GEOPD_FAULT_SIGTERM_AT_STEP": "3"}, check=False)
    assert proc.returncode == 75 and "resumed" in proc.stderr, proc.stderr[-2000:]
    changed = {**spec, "optim": {**spec["optim"], "lr": 2 * spec["optim"]["lr"]}}
    proc = run_cli(changed, tmp_path / "out")
    assert "resumed" not in proc.stderr and "saved under other settings" in proc.stderr, proc.stderr[-2000:]
    rows = [json.loads(l) for l in open(str(tmp_path / "out") + ".metrics.jsonl")]
    assert [r["step"] for r in rows] == list(range(1, spec["steps"] + 1))
    fresh = respec(world, "sft-8b", tmp_path / "fresh", optim=changed["optim"])
    run_cli(fresh, tmp_path / "fresh" / "out")
    ref = [json.loads(l) for l in open(str(tmp_path / "fresh" / "out") + ".metrics.jsonl")]
    assert [r["loss"] for r in rows] == [r["loss"] for r in ref]


def test_bad_inputs_stop_before_compute(world, tmp_path):
    from geopd.train.loop import Trainer

    spec = respec(world, "opd-8b-t32b", tmp_path)
    with pytest.raises(UserError, match="not found|missing|does not exist"):
        Trainer({**spec, "init": str(tmp_path / "nope")}, progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "train.jsonl").write_text("")
    with pytest.raises(UserError, match="empty"):
        Trainer({**spec, "data": {"name": "x", "dir": str(empty), "kind": "synthetic-math"}}, progress=False)
    # A teacher whose tokenizer differs from the student's.
    from transformers import AutoTokenizer
    other = tmp_path / "other-teacher"
    import shutil
    shutil.copytree(world.built_model_dir("qwen3-32b"), other)
    tok = AutoTokenizer.from_pretrained(other)
    tok.add_tokens(["<extra>"])
    tok.save_pretrained(other)
    (other / "manifest.json").unlink(missing_ok=True)
    with pytest.raises(UserError, match="different vocabularies"):
        Trainer({**spec, "teacher": str(other)}, progress=False)


def test_nan_loss_stops_with_step(world, tmp_path):
    from geopd.train.loop import Trainer

    spec = respec(world, "sft-8b", tmp_path, optim={**world.run_spec("sft-8b").to_dict()["optim"], "lr": float("inf")})
    trainer = Trainer(spec, progress=False)
    with pytest.raises(UserError, match="non-finite"):
        trainer.fit()


@pytest.mark.slow
def test_two_process_fsdp_matches_one_process(world, tmp_path):
    spec = respec(world, "sft-8b", tmp_path / "one", steps=4, checkpoints=[4])
    run_cli(spec, tmp_path / "one" / "out")
    spec2 = respec(world, "sft-8b", tmp_path / "two", steps=4, checkpoints=[4])
    out2 = tmp_path / "two" / "out"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           "-m", "geopd.cli", "train", "--spec", spec_json(spec2), "--out", str(out2),
                           "--metrics", str(out2) + ".metrics.jsonl", "--threads", "1", "--no-progress"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    a, b = weights(tmp_path / "one" / "out" / "step-4"), weights(out2 / "step-4")
    for k in a:
        torch.testing.assert_close(a[k].float(), b[k].float(), rtol=0, atol=2e-2)
    la = [json.loads(l)["loss"] for l in open(str(tmp_path / "one" / "out") + ".metrics.jsonl")]
    lb = [json.loads(l)["loss"] for l in open(str(out2) + ".metrics.jsonl")]
    assert la == pytest.approx(lb, rel=1e-4)


# ---- FSDP2, uneven shares, the global batch in samples, zero rewards ------------------------------

def run_worker(scenarios: list[dict], tmp_path: Path, procs: int) -> dict:
    """tests/fsdp_worker.py under torchrun with `procs` gloo processes."""
    sc = tmp_path / f"scenarios-{procs}.json"
    sc.write_text(json.dumps(scenarios))
    out = tmp_path / f"results-{procs}.json"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}",
                           str(REPO / "tests/fsdp_worker.py"), str(sc), str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


def uneven_scenarios(world, tmp_path: Path, procs: int) -> list[dict]:
    """SFT and OPD updates on 2 ranks holding 9 + 6 sequences / 3 + 2 prompts (odd totals), micro-
    batches small enough that the ranks run different numbers of them; an optimizer whose step is
    ~ lr * gradient (eps 1), so the comparison sees gradients, not Adam's sign at step one."""
    optim = {"lr": 1e-2, "schedule": "constant", "weight_decay": 0.0, "betas": [0.9, 0.98], "eps": 1.0}
    small = {"micro_batch_tokens": 96, "logprob_chunk_tokens": 16}
    bf16 = {**small, "param_dtype": "bfloat16", "reduce_dtype": "float32", "activation_checkpointing": True}
    opd = world.run_spec("opd-8b-t32b").to_dict()
    rollout = {**opd["rollout"], "samples": 2, "max_new_tokens": 12, "global_batch_size": 4}
    out = []
    for name, kind, base, engine, shares in (("sft", "sft", world.run_spec("sft-8b").to_dict(), small, [9, 6]),
                                              ("opd", "rl", opd, small, [3, 2]),
                                              ("opd-idle-rank", "rl", opd, small, [3, 0]),
                                              ("opd-bf16", "rl", opd, bf16, [3, 2])):
        spec = {**base, "optim": optim, "engine": engine, "state_dir": str(tmp_path / f"w{procs}" / name)}
        if kind == "rl":
            spec["rollout"] = rollout
        out.append({"name": name, "kind": kind, "spec": spec, "shares": shares, "steps": 2})
    return out


@pytest.mark.slow
def test_uneven_shares_on_two_processes_equal_one_process(world, tmp_path):
    """No prompt dropped, the token-mean exact over uneven shares, zero-weight micro-batches where a
    rank has fewer (or none at all): 2 processes end where 1 does, for SFT and for OPD updates
    (fp32 and bf16)."""
    shares = {sc["name"]: sc["shares"] for sc in uneven_scenarios(world, tmp_path, 1)}
    one = run_worker(uneven_scenarios(world, tmp_path, 1), tmp_path, 1)
    two = run_worker(uneven_scenarios(world, tmp_path, 2), tmp_path, 2)
    for name, tol in (("sft", 2e-6), ("opd", 2e-6), ("opd-idle-rank", 2e-6), ("opd-bf16", 2e-4)):
        a, b = one[name], two[name]
        for ra, rb in zip(a["rows"], b["rows"]):
            assert ra.get("updates") == rb.get("updates")
            assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-3 if "bf16" in name else 1e-5, abs=1e-7)
        if name != "sft":  # 10 samples at 4 per update: 2 updates (6 samples of the idle-rank run: 1)
            samples = 2 * sum(shares[name])
            assert (a["rows"][0]["samples"], a["rows"][0]["updates"]) == (samples, samples // 4)
        wa, wb = torch.load(a["weights"]), torch.load(b["weights"])
        init = weights(Path(world.run_spec("sft-8b" if name == "sft" else "opd-8b-t32b").init))
        moved = max(float((wa[k] - init[k].float()).abs().max()) for k in init)
        assert moved > 20 * tol, moved  # the updates are far larger than the tolerance
        for k in wa:
            torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=tol, msg=f"{name} {k}")


def test_reward_varied_samples_counts_the_samples_of_groups_whose_rewards_differ(world, tmp_path, monkeypatch):
    """The metric the report's "no reward signal" rule reads (geopd.report.data.no_reward_signal):
    step 1 rewards one sample of the first group only (that group's samples varied), step 2
    rewards none (no group varied)."""
    from geopd.train.loop import Trainer

    rlvr = world.run_spec("rlvr-8b").to_dict()
    n = rlvr["rollout"]["samples"]
    spec = respec(world, "rlvr-8b", tmp_path, steps=2, checkpoints=[2],
                  objective={**rlvr["objective"], "zero_reward_patience": 0})
    trainer = Trainer(spec, progress=False)
    calls = iter(range(100))

    def rewards(recs, texts):
        out = torch.zeros(len(texts))
        if next(calls) == 0:
            out[0] = 1.0
        return out

    monkeypatch.setattr(trainer, "_rewards", rewards)
    trainer.fit()
    rows = [json.loads(l) for l in open(Path(spec["state_dir"]) / "metrics.jsonl")]
    assert [(r["step"], r["reward_varied_samples"]) for r in rows] == [(1, float(n)), (2, 0.0)]
    assert rows[0]["reward"] == pytest.approx(1 / (rlvr["rollout"]["prompts_per_step"] * n))


def test_all_zero_rewards_stop_the_run(world, tmp_path, monkeypatch):
    """The slice's RLVR student never answers right: with zero_reward_patience 3 the run stops at
    step 3 with a message, also when it was resumed in between; one rewarded step disarms it."""
    from geopd.train.loop import Trainer

    rlvr = world.run_spec("rlvr-8b").to_dict()
    spec = respec(world, "rlvr-8b", tmp_path, steps=6, checkpoints=[6],
                  objective={**rlvr["objective"], "zero_reward_patience": 3})
    monkeypatch.setenv("GEOPD_FAULT_SIGTERM_AT_STEP", "2")
    from geopd.train.loop import Stop
    with pytest.raises(Stop):
        Trainer(spec, progress=False).fit()  # state saved after step 2, zero rewards so far
    monkeypatch.delenv("GEOPD_FAULT_SIGTERM_AT_STEP")
    with pytest.raises(UserError, match=r"every reward of its first 3 steps was 0 .*zero_reward_patience: 0"):
        Trainer(spec, progress=False).fit()
    rows = [json.loads(l) for l in open(Path(spec["state_dir"]) / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2] and all(r["reward"] == 0 for r in rows)

    fresh = respec(world, "rlvr-8b", tmp_path / "rewarded", steps=4, checkpoints=[4],
                   objective={**rlvr["objective"], "zero_reward_patience": 3})
    trainer = Trainer(fresh, progress=False)
    real = trainer._rewards
    calls = iter(range(100))
    monkeypatch.setattr(trainer, "_rewards", lambda recs, texts: real(recs, texts) + (next(calls) == 0))
    trainer.fit()  # step 1 rewarded every sample: zeros afterwards are a result, not a broken setup
    assert trainer.step == 4


# ---- how a step's samples split into updates, dynamic sampling, the reward ------------------------

@pytest.mark.parametrize("split, expect", [("contiguous", [0, 0, 0, 0, 1, 1, 1, 1]),
                                           ("interleaved", [0, 1, 0, 1, 0, 1, 0, 1])])
def test_update_split_is_the_run_s(world, tmp_path, monkeypatch, split, expect):
    """4 prompts x 2 samples in updates of 4: slime's contiguous blocks (prompts 0-1, then 2-3)
    or sample g in update g mod 2; the trainer cuts its step as the run says."""
    from geopd.train import loop

    seen, real = [], loop.update_of_samples
    monkeypatch.setattr(loop, "update_of_samples", lambda *a: seen.append(real(*a)) or seen[-1])
    opd = world.run_spec("opd-8b-t32b").to_dict()
    spec = respec(world, "opd-8b-t32b", tmp_path, steps=1, checkpoints=[1],
                  rollout={**opd["rollout"], "update_split": split})
    trainer = loop.Trainer(spec, progress=False)
    trainer.fit()
    assert seen == [expect]


def scripted_rewards(monkeypatch, trainer, rounds: list[list[bool]]):
    """Replace the task reward: round k's groups are informative (rewards 1, 0) where rounds[k]
    says so, all-zero elsewhere; returns the records each round graded."""
    graded, calls = [], iter(rounds)

    def rewards(records, texts):
        flags = next(calls)
        n = trainer.spec.rollout.samples
        graded.append([records[i * n]["id"] for i in range(len(records) // n)])
        return torch.tensor([float(flags[i // n] and i % n == 0) for i in range(len(records))])

    monkeypatch.setattr(trainer, "_rewards", rewards)
    return graded


def dynamic_spec(world, tmp_path, max_rounds: int):
    rlvr = world.run_spec("rlvr-8b").to_dict()
    return respec(world, "rlvr-8b", tmp_path, steps=1, checkpoints=[1],
                  rollout={**rlvr["rollout"], "global_batch_size": 8, "dynamic_sampling": {"max_rounds": max_rounds}},
                  objective={**rlvr["objective"], "zero_reward_patience": 0})


def test_dynamic_sampling_refills_the_batch_with_informative_groups(world, tmp_path, monkeypatch):
    """As slime's dynamic sampling: rounds of 4 prompts until 4 groups whose rewards differ are
    kept, the first ones in draw order; the update trains on exactly those 4 x 2 samples."""
    from geopd.train.data import RecordStream
    from geopd.train.loop import Trainer

    trainer = Trainer(dynamic_spec(world, tmp_path, max_rounds=4), progress=False)
    graded = scripted_rewards(monkeypatch, trainer, [[True, False, False, True], [False, True, False, False],
                                                     [True, True, True, True]])
    trained, real = [], trainer.train_on
    monkeypatch.setattr(trainer, "train_on", lambda ro, records, seed, rewards=None: trained.append(
        ([r["id"] for r in records], ro.num_samples, rewards.tolist())) or real(ro, records, seed, rewards=rewards))
    trainer.fit()
    rows = [json.loads(l) for l in open(Path(trainer.spec.state_dir) / "metrics.jsonl")]
    stream = RecordStream(trainer.records, trainer.spec.seed)
    drawn = [[r["id"] for r in stream.next(4)] for _ in range(3)]
    assert graded == drawn  # three rounds of the step's stream
    expect = [drawn[0][0], drawn[0][3], drawn[1][1], drawn[2][0]]  # round 3: only the first is needed
    assert trained == [(expect, 8, [1.0, 0.0] * 4)]
    row = rows[0]
    assert (row["sampling_rounds"], row["groups_kept"], row["groups_drawn"]) == (3, 4, 12)
    assert (row["samples"], row["updates"]) == (8, 1)
    assert row["reward"] == pytest.approx(7 / 24) and row["reward_trained"] == 0.5
    assert trainer.stream.state() == stream.state()  # the next step draws after the last round


def test_dynamic_sampling_stops_at_its_cap(world, tmp_path, monkeypatch):
    """No informative group in max_rounds rounds: the step trains on what it has (here nothing:
    no update, the weights stay), and says so."""
    from geopd.train.loop import Trainer

    trainer = Trainer(dynamic_spec(world, tmp_path, max_rounds=2), progress=False)
    graded = scripted_rewards(monkeypatch, trainer, [[False] * 4, [False, False, True, False]])
    before = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit()
    row = json.loads(open(Path(trainer.spec.state_dir) / "metrics.jsonl").readline())
    assert len(graded) == 2 and (row["sampling_rounds"], row["groups_kept"], row["groups_drawn"]) == (2, 1, 8)
    assert (row["samples"], row["updates"]) == (2, 1)  # the one group it found
    trainer = Trainer(dynamic_spec(world, tmp_path / "none", max_rounds=2), progress=False)
    scripted_rewards(monkeypatch, trainer, [[False] * 4, [False] * 4])
    trainer.fit()
    row = json.loads(open(Path(trainer.spec.state_dir) / "metrics.jsonl").readline())
    assert (row["sampling_rounds"], row["groups_kept"], row["samples"], row["updates"]) == (2, 0, 0, 0)
    assert all(torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())


def test_reward_is_the_run_s_grader(world, tmp_path):
    """objective.reward picks the math grader: math-verify takes the last \\boxed{} anywhere,
    deepscaler only what follows the last </think> (an answer inside the thinking earns 0)."""
    from geopd.train.loop import Trainer

    rlvr = world.run_spec("rlvr-8b").to_dict()
    records = [{"id": "a", "answer": "3"}] * 3
    texts = ["<think>3 it is: \\boxed{3}</think> so 4", "<think>hmm</think> \\boxed{3}", "\\boxed{3}"]
    got = {}
    for grader in ("math-verify", "deepscaler"):
        spec = respec(world, "rlvr-8b", tmp_path / grader, objective={**rlvr["objective"], "reward": grader})
        got[grader] = Trainer(spec, progress=False)._rewards(records, texts).tolist()
    assert got == {"math-verify": [1.0, 1.0, 1.0], "deepscaler": [0.0, 1.0, 0.0]}


@pytest.mark.parametrize("objective, split", [
    ({"coef": 1.0, "clip_low": 0.2, "clip_high": 0.2, "aggregation": "seq-mean-token-mean"}, "contiguous"),  # paper
    ({"coef": 1.0, "clip_low": 0.2, "clip_high": 0.28, "aggregation": "token-mean"}, "interleaved"),  # miniature
])
def test_opd_loss_is_the_run_s_aggregation(world, tmp_path, monkeypatch, objective, split):
    """One OPD update of 8 samples (ratio 1 at its start): the logged loss is minus the mean of
    each sample's token-mean advantage (slime's per-sample loss) or minus the token-mean over the
    update (slime's --calculate-per-token-loss), as the run's objective says."""
    from geopd.train.loop import Trainer

    opd = world.run_spec("opd-8b-t32b").to_dict()
    spec = respec(world, "opd-8b-t32b", tmp_path, steps=1, checkpoints=[1], objective=objective,
                  rollout={**opd["rollout"], "global_batch_size": 8, "update_split": split})
    trainer = Trainer(spec, progress=False)
    seen, real = [], trainer._policy_updates
    monkeypatch.setattr(trainer, "_policy_updates",
                        lambda seq, attn, kept, old, adv: seen.append((kept, adv)) or real(seq, attn, kept, old, adv))
    trainer.fit()
    (kept, adv), = seen
    row = json.loads(open(Path(trainer.spec.state_dir) / "metrics.jsonl").readline())
    per_sample = -((adv * kept).sum(1) / kept.sum(1)).mean()
    per_token = -(adv * kept).sum() / kept.sum()
    assert row["updates"] == 1 and abs(float(per_sample - per_token)) > 1e-4  # unequal lengths tell them apart
    expect = per_sample if objective["aggregation"] == "seq-mean-token-mean" else per_token
    assert row["loss"] == pytest.approx(float(expect), rel=1e-5)
