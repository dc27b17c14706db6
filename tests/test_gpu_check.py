"""scripts/gpu_check.py --tiny: the GPU check's code (the trainer's paper engine on one process, OPD
updates against synthetic teacher log-probs, the cost model's prediction for the same shape) on CPU,
as CI runs it; on a GPU the same script measures the peak against that prediction."""
import json
import subprocess
import sys


def test_gpu_check_tiny_runs_the_paper_engine_and_the_prediction(repo, tmp_path):
    out = tmp_path / "figures.json"
    proc = subprocess.run([sys.executable, "scripts/gpu_check.py", "--tiny", "--json", str(out)], cwd=repo,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["device"] == "cpu" and len(figures["updates"]) == 2
    assert all(u["updates"] == 1 and u["tokens_per_s"] > 0 and u["mfu"] is None for u in figures["updates"])
    assert figures["weights_moved"] > 0
    predicted = figures["predicted_gib"]
    assert 0 < predicted["recompute"] < predicted["train step"] == predicted["tensors"] < predicted["with allocator slack"]
    assert "cost model: train step" in proc.stdout and "measured peak: CUDA only" in proc.stdout
