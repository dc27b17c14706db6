"""Schema errors, cross-reference errors, and the shape of both grids."""
import copy

import pytest
import yaml

from geopd.config import read_yaml, schema_errors
from geopd.errors import UserError
from geopd.grid import Grid

PAPER_FAMILIES = {"sft", "sft-anchor", "opd", "teacher-scale", "student-scale", "code", "moe-teacher",
                  "seed", "rlvr", "token-sparse", "off-policy", "alpha-mix", "rank16", "effopd"}
PAPER_RUNS = {"sft-8b", "sft-4b", "sft-14b", "opd-8b-t32b", "opd-4b-t8b", "opd-4b-t14b", "opd-4b-t32b",
              "opd-14b-t32b", "opd-8b-t32b-code", "opd-8b-t30ba3b", "opd-8b-t32b-seed1",
              "opd-8b-t32b-seed2", "rlvr-8b", "opd-sparse-topkl-0.25", "opd-sparse-topkl-0.50",
              "opd-sparse-random-0.25", "opd-sparse-random-0.50", "opd-offpolicy", "opd-mix-0.75",
              "opd-mix-0.50", "opd-mix-0.25", "opd-mix-0.05", "opd-mix-0.01", "rank16-opd",
              "rank16-sft", "effopd"}


@pytest.fixture(params=["config/config.yaml", "config/paper.yaml"])
def config_path(request, repo):
    return repo / request.param


def write(tmp_path, config):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_both_configs_valid_with_every_paper_run(config_path):
    grid = Grid.from_file(config_path)
    assert set(grid.runs) == PAPER_RUNS
    assert {r.family for r in grid.runs.values()} == PAPER_FAMILIES


def test_same_run_names_and_families_in_both(repo):
    mini, paper = Grid.from_file(repo / "config/config.yaml"), Grid.from_file(repo / "config/paper.yaml")
    assert {n: r.family for n, r in mini.runs.items()} == {n: r.family for n, r in paper.runs.items()}
    assert {n: r.method for n, r in mini.runs.items()} == {n: r.method for n, r in paper.runs.items()}


def test_paper_settings_follow_spec(repo):
    g = Grid.from_file(repo / "config/paper.yaml")
    opd, rlvr, sft = g.runs["opd-8b-t32b"], g.runs["rlvr-8b"], g.runs["sft-8b"]
    assert opd.checkpoints == [63, 127, 191, 255, 299]
    assert opd.settings.rollout.prompts_per_step == 8 and opd.settings.rollout.samples == 8  # 64 / 8: slime's reading
    assert opd.settings.optim.lr == 1e-6 and opd.settings.optim.betas == [0.9, 0.98]
    assert rlvr.steps == 1023 and rlvr.settings.optim.eps == 1e-15
    assert rlvr.settings.objective.clip_high == 0.28
    assert sft.steps == 5375 and sft.settings.optim.schedule == "cosine"
    assert g.runs["opd-offpolicy"].settings.rollout.source == "teacher"
    assert g.runs["opd-offpolicy"].settings.objective.clip_low == 1.0
    assert g.runs["opd-mix-0.05"].settings.objective.alpha == 0.05
    assert g.runs["opd-sparse-random-0.25"].settings.objective.sparsify == {"mode": "random", "rho": 0.25}
    assert g.runs["rank16-opd"].init.name == "opd-8b-t32b" and g.runs["rank16-opd"].init.step == 63
    assert g.runs["opd-8b-t30ba3b"].teacher == "qwen3-30b-a3b"
    assert g.model_source("qwen3-32b") == "results/paper/mirror/models/Qwen/Qwen3-32B"  # hub_mirror


def test_paper_evaluation_fits_the_context_of_every_model_it_evaluates(repo, paper_mirror):
    """vLLM refuses a max_model_len past a model's max_position_embeddings: 32768 for the Qwen3-*-Base
    models every student is fine-tuned from (the fixture's config.json copies the hub's), 40960 for
    the post-trained teachers. A 2048-token prompt must still fit beside max_new_tokens."""
    import json

    from geopd.grid.runs import Ref

    g = Grid.from_file(repo / "config/paper.yaml")

    def root(ref: Ref) -> str:
        return ref.name if ref.kind == "model" else root(g.runs[ref.name].init)

    evaluated = {(root(r.init), b) for r in g.runs.values() for b in r.benchmarks}
    evaluated |= {(m, b) for m, benches in g.teacher_benchmarks().items() for b in benches}
    for model, bench in sorted(evaluated):
        cfg = json.loads((paper_mirror / "models" / g.models[model]["hub"] / "config.json").read_text())
        spec = g.benchmarks[bench]
        assert spec["max_model_len"] <= cfg["max_position_embeddings"], (model, bench)
        assert spec["max_new_tokens"] + 2048 <= spec["max_model_len"], bench


def test_extends_inherits_and_overrides(repo):
    g = Grid.from_file(repo / "config/config.yaml")
    base, seed = g.runs["opd-8b-t32b"], g.runs["opd-8b-t32b-seed1"]
    assert seed.seed == 1 and base.seed == 0
    assert seed.settings == base.settings and seed.teacher == base.teacher
    assert seed.family == "seed"  # family is not inherited


@pytest.mark.parametrize("mutate, key", [
    (lambda c: c["runs"]["opd-8b-t32b"]["optim"].__setitem__("lrr", 1.0) if "optim" in c["runs"]["opd-8b-t32b"]
     else c["runs"]["opd-8b-t32b"].__setitem__("optim", {"lrr": 1.0}), "'lrr'"),
    (lambda c: c.__setitem__("bogus_top", 1), "'bogus_top'"),
    (lambda c: c["runs"]["rlvr-8b"].__setitem__("method", "ppo"), "runs.rlvr-8b.method"),
    (lambda c: c["method_defaults"]["opd"]["rollout"].__setitem__("samples", 0), "method_defaults.opd.rollout.samples"),
])
def test_schema_errors_name_key_and_file(tmp_path, repo, mutate, key):
    config = read_yaml(repo / "config/config.yaml")
    mutate(config)
    path = write(tmp_path, config)
    with pytest.raises(UserError) as exc:
        Grid.from_file(path)
    assert key in str(exc.value) and str(path) in str(exc.value)


def test_unknown_init_is_named(tmp_path, repo):
    config = read_yaml(repo / "config/config.yaml")
    config["runs"]["opd-8b-t32b"]["init"] = "sft-9b"
    with pytest.raises(UserError, match=r"bad.yaml: runs.opd-8b-t32b.init: unknown run or model 'sft-9b'"):
        Grid.from_file(write(tmp_path, config))


def test_cycle_between_runs_is_named(tmp_path, repo):
    config = read_yaml(repo / "config/config.yaml")
    config["runs"]["sft-8b"]["init"] = "opd-8b-t32b"
    with pytest.raises(UserError, match=r"cycle between runs: .*opd-8b-t32b.*sft-8b"):
        Grid.from_file(write(tmp_path, config))


def test_extends_cycle_and_missing_checkpoint(tmp_path, repo):
    config = read_yaml(repo / "config/config.yaml")
    config["runs"]["opd-8b-t32b"]["extends"] = "opd-4b-t8b"
    with pytest.raises(UserError, match="cycle between runs"):
        Grid.from_file(write(tmp_path, config))
    config = read_yaml(repo / "config/config.yaml")
    config["runs"]["rank16-opd"]["init"] = "opd-8b-t32b@11"
    with pytest.raises(UserError, match="saves no checkpoint at step 11"):
        Grid.from_file(write(tmp_path, config))


def test_teacher_rules(tmp_path, repo):
    config = read_yaml(repo / "config/config.yaml")
    del config["runs"]["opd-8b-t32b"]["teacher"]
    with pytest.raises(UserError, match="needs a teacher"):
        Grid.from_file(write(tmp_path, config))


def test_schema_accepts_valid_and_lists_all_errors(repo):
    config = read_yaml(repo / "config/paper.yaml")
    assert schema_errors(config) == []
    bad = copy.deepcopy(config)
    bad["diagnostics"]["k"] = -1
    bad["resources"]["train"]["gpus"] = "eight"
    errors = schema_errors(bad)
    assert any(e.startswith("diagnostics.k") for e in errors)
    assert any(e.startswith("resources.train.gpus") for e in errors)


def test_run_spec_paths(repo):
    g = Grid.from_file(repo / "config/config.yaml")
    spec = g.run_spec("rank16-opd")
    assert spec.init == "results/runs/opd-8b-t32b/checkpoints/step-10"
    assert spec.start_step == 10
    assert spec.projection.to_dict() == {"checkpoint": "results/runs/opd-8b-t32b/checkpoints/step-10",
                                         "origin": "results/runs/sft-8b/checkpoints/step-800", "rank": 16}
    assert g.run_spec("opd-8b-t32b").teacher == "results/models/qwen3-32b"


def test_eval_at_adds_evaluation_only_steps_that_are_saved_never_diagnosed_nor_inherited(repo):
    g = Grid.from_file(repo / "config/paper.yaml")
    opd, eff, r16 = g.runs["opd-8b-t32b"], g.runs["effopd"], g.runs["rank16-sft"]
    # Fig. 8: the five reasoning benchmarks on both projected runs and the runs they branch from
    five = ["aime24", "aime25", "math500", "minerva", "gpqa-diamond"]
    for run in ("sft-8b", "opd-8b-t32b", "rank16-sft", "rank16-opd"):
        assert set(five) <= set(g.runs[run].benchmarks), run
    assert g.runs["sft-8b"].eval_steps("aime25") == [1024, *r16.checkpoints]   # the anchor, then the window
    assert g.runs["rank16-opd"].eval_steps("gpqa-diamond") == g.runs["rank16-opd"].checkpoints
    # EffOPD and vanilla OPD on AIME 2024 at a cadence that resolves a ~3x speed-up
    assert opd.eval_steps("aime24")[:4] == [2, 4, 8, 12] and eff.eval_steps("aime24") == opd.eval_steps("aime24")
    assert opd.saved_steps[:3] == [2, 4, 8] and opd.checkpoints == [63, 127, 191, 255, 299]
    assert g.run_spec("opd-8b-t32b").checkpoints == opd.saved_steps
    assert {s for r, s, _ in g.diagnostics_targets() if r == "opd-8b-t32b"} == {63, 127, 191, 255, 299}
    targets = set(g.eval_targets())
    assert ("opd-8b-t32b", "2", "aime24") in targets and ("opd-8b-t32b", "2", "aime25") not in targets
    # not inherited: the seeds, mixes and token-sparse runs evaluate their checkpoints only
    assert g.runs["opd-8b-t32b-seed1"].eval_at == {} and g.runs["opd-mix-0.50"].saved_steps == opd.checkpoints
    assert g.teacher_benchmarks()["qwen3-32b"] == ["aime24", "lcb-v5"]   # teachers: `eval` only
    spec = g.report_spec()["runs"]["opd-8b-t32b"]
    assert spec["eval_steps"]["aime25"] == [63, 127, 191, 255, 299] and spec["eval"][0] == "aime24"


def test_eval_at_errors_name_the_key(tmp_path, repo):
    config = read_yaml(repo / "config/config.yaml")
    config["runs"]["effopd"]["eval_at"] = {"math-heldout": [4, 60]}
    with pytest.raises(UserError, match=r"runs.effopd.eval_at.math-heldout: steps \[60\] outside \(0, 50\]"):
        Grid.from_file(write(tmp_path, config))
    config["runs"]["effopd"]["eval_at"] = {"aime99": [4]}
    with pytest.raises(UserError, match=r"runs.effopd.eval_at: unknown benchmark 'aime99'"):
        Grid.from_file(write(tmp_path, config))
