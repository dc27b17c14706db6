"""The local Slurm cluster (scripts/slurm-cluster.sh) driven through the project's
Slurm profile (slurm/config.yaml) by a throwaway two-rule workflow.

Skips with the script's own one-line reason where this OS cannot run the cluster
(exit code 3); GEOPD_REQUIRE_SLURM=1 (set by .ci/run) turns that skip into a failure.
"""
import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "slurm-cluster.sh"
PROFILE = REPO / "slurm"
CANNOT_RUN = 3

pytestmark = pytest.mark.slurm


def _cluster(cmd: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), cmd], capture_output=True, text=True,
                          timeout=900, env=env)


def _export(up: subprocess.CompletedProcess) -> str:
    match = re.search(r"^export SLURM_CONF=(\S+)$", up.stdout, re.M)
    assert match, f"no export line in:\n{up.stdout}\n{up.stderr}"
    return match.group(1)


@pytest.fixture(scope="session")
def slurm_conf() -> str:
    """Bring the cluster up for the session; take it down only if we brought it up."""
    was_up = _cluster("status").returncode == 0
    up = _cluster("up")
    if up.returncode == CANNOT_RUN:
        reason = (up.stderr.strip().splitlines() or ["slurm-cluster.sh exited 3"])[-1]
        if os.environ.get("GEOPD_REQUIRE_SLURM") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    assert up.returncode == 0, f"slurm-cluster.sh up failed:\n{up.stderr}"
    conf = _export(up)
    # As `eval "$(scripts/slurm-cluster.sh up)"` would: the tests' own squeue/scontrol/scancel
    # find this cluster (nothing machine-wide points at it).
    before = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = conf
    yield conf
    if before is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = before
    if not was_up:
        down = _cluster("down")
        assert down.returncode == 0, down.stderr


def test_up_is_idempotent(slurm_conf):
    again = _cluster("up")
    assert again.returncode == 0, again.stderr
    assert f"export SLURM_CONF={slurm_conf}" in again.stdout
    status = _cluster("status")
    assert status.returncode == 0, status.stdout + status.stderr
    lines = status.stdout.splitlines()
    table = lines[next(i for i, line in enumerate(lines) if line.startswith("PARTITION")) + 1:]
    partitions = {line.split()[0] for line in table if line.strip()}
    assert partitions == {"cpu*", "gpu"}, status.stdout


def test_required_cluster_that_cannot_come_up_fails_instead_of_skipping(tmp_path):
    """What CI relies on: with GEOPD_REQUIRE_SLURM=1 a cluster that cannot start is an error.
    The cluster here cannot start because its directory is too deep for unix socket paths."""
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    results = {}
    for required in ("1", "0"):
        env = dict(os.environ, GEOPD_REQUIRE_SLURM=required, SLURM_CLUSTER_DIR=str(deep))
        env.pop("PYTEST_ADDOPTS", None)
        results[required] = subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs", "--basetemp",
             str(tmp_path / f"base{required}"), f"{__file__}::test_up_is_idempotent"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    required, optional = results["1"], results["0"]
    assert required.returncode == 1, required.stdout[-3000:] + required.stderr[-3000:]
    assert "1 error" in required.stdout and "skipped" not in required.stdout, required.stdout[-3000:]
    assert "too deep for slurmstepd's unix sockets" in required.stdout, required.stdout[-3000:]
    assert optional.returncode == 0 and "1 skipped" in optional.stdout, optional.stdout[-3000:]
    assert not deep.exists()   # refused before it wrote anything


def test_a_second_checkout_runs_its_own_cluster_alongside(slurm_conf, tmp_path):
    """Another checkout's cluster (its own directory) on the same machine: other ports, its own
    munged and config, and its job steps find its config without SLURM_CONF."""
    env = dict(os.environ, SLURM_CLUSTER_DIR=str(tmp_path / "other"))
    env.pop("SLURM_CONF", None)
    up = _cluster("up", env=env)
    try:
        assert up.returncode == 0, up.stderr
        other = _export(up)
        assert other == str(tmp_path / "other/etc/slurm.conf") != slurm_conf
        ports = [re.search(rf"^{k}=(\d+)$", Path(conf).read_text(), re.M).group(1)
                 for conf in (slurm_conf, other) for k in ("SlurmctldPort", "SlurmdPort")]
        assert len(set(ports)) == 4, ports
        sockets = {re.search(r"^AuthInfo=socket=(\S+)$", Path(conf).read_text(), re.M).group(1)
                   for conf in (slurm_conf, other)}
        assert len(sockets) == 2 and all(Path(s).is_socket() for s in sockets), sockets
        # A job whose inner srun has no SLURM_CONF (as the executor's job-step plugin runs it).
        job = subprocess.run(
            ["sbatch", "--wait", "-o", str(tmp_path / "job.out"), "--wrap",
             "env -u SLURM_CONF srun -n1 scontrol show config | grep -E '^(SlurmctldPort|StateSaveLocation) '"],
            env=dict(env, SLURM_CONF=other), capture_output=True, text=True, timeout=120)
        assert job.returncode == 0, job.stderr
        shown = (tmp_path / "job.out").read_text()
        assert re.search(rf"SlurmctldPort\s*=\s*{ports[2]}\b", shown), shown
        assert str(tmp_path / "other/state/ctld") in shown, shown
    finally:
        down = _cluster("down", env=env)
    assert down.returncode == 0, down.stderr
    assert _cluster("status", env=env).returncode == 1
    assert _cluster("status").returncode == 0   # this session's cluster is untouched


def test_cancelled_job_leaves_no_process_behind(slurm_conf, tmp_path):
    """A child that ignores SIGTERM and outlives the batch shell (as Snakemake's job-step process
    does at a time limit) is still killed: the cluster tracks processes by process group, so an
    orphan reparented to init is not lost."""
    marker = f"geopd-orphan-probe-{os.getpid()}-{tmp_path.name}"
    child = (f"{sys.executable} -c 'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
             f"time.sleep(300)' {marker}")
    job = subprocess.run(["sbatch", "--parsable", "-o", "/dev/null", "--wrap", f"{child}; echo done"],
                         capture_output=True, text=True, check=True).stdout.strip()

    def probe_pids():
        return subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout.split()

    try:
        _wait_for(probe_pids, 60, "the job's child process")
        subprocess.run(["scancel", job], check=True)
        # KillWait (30 s) bounds SIGTERM -> SIGKILL.
        deadline = time.time() + 45
        while probe_pids() and time.time() < deadline:
            time.sleep(0.5)
        assert not probe_pids(), f"job {job}'s child outlived it"
    finally:
        for pid in probe_pids():
            subprocess.run(["kill", "-KILL", pid])


SNAKEFILE = textwrap.dedent(
    r'''
    localrules: all

    rule all:
        input: "out/gpu.txt", "out/cpu.txt"

    # The resource keys the workflow's config maps to (src/geopd/workflow.py).
    rule gpu_probe:
        output: "out/gpu.txt"
        resources:
            slurm_partition="gpu", gpus=1, gres="gpu:1", nodes=1, tasks=1,
            cpus_per_task=1, mem_mb=500, runtime=5,
        shell:
            "( echo CUDA_VISIBLE_DEVICES=${{CUDA_VISIBLE_DEVICES-unset}}; "
            "echo SLURM_STEP_GPUS=${{SLURM_STEP_GPUS-unset}}; "
            "scontrol show job $SLURM_JOB_ID ) > {output}"

    # Partition, memory, time limit and cpus per task from the profile's
    # default-resources; two tasks, started from the rule's shell with srun.
    rule cpu_probe:
        output: "out/cpu.txt"
        threads: 1
        resources: tasks=2
        shell:
            "( echo CUDA_VISIBLE_DEVICES=${{CUDA_VISIBLE_DEVICES-unset}}; "
            "scontrol show job $SLURM_JOB_ID; "
            "srun --overlap -n2 bash -c 'echo TASK=$SLURM_PROCID/$SLURM_NTASKS' ) > {output}"
    '''
)


def _field(text: str, key: str) -> str:
    match = re.search(rf"(?:^|\s){re.escape(key)}=(\S*)", text)
    assert match, f"{key}= not in:\n{text}"
    return match.group(1)


def test_profile_puts_rules_on_their_partitions_with_their_gres(slurm_conf, tmp_path):
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    env = dict(os.environ, SLURM_CONF=slurm_conf)
    cmd = [
        sys.executable, "-m", "snakemake", "--profile", str(PROFILE), "--retries", "0",
        # Short polling so the test takes seconds, not minutes.
        "--slurm-init-seconds-before-status-checks", "2",
        "--seconds-between-status-checks", "2", "--verbose",
    ]
    run = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=240)
    logs = "\n".join(p.read_text() for p in (tmp_path / ".snakemake").rglob("slurm_logs/**/*.log"))
    assert run.returncode == 0, f"{run.stdout[-4000:]}\n{run.stderr[-6000:]}\n{logs[-4000:]}"
    out = run.stdout + run.stderr
    # Polled with squeue (no slurmdbd), not silently switched back to sacct.
    assert "command=squeue" in out
    assert "Falling back to 'sacct'" not in out

    gpu = (tmp_path / "out/gpu.txt").read_text()
    assert _field(gpu, "Partition") == "gpu"
    assert _field(gpu, "TresPerNode") == "gres:gpu:1"
    assert _field(gpu, "NumNodes") == "1"
    visible = _field(gpu, "CUDA_VISIBLE_DEVICES")
    assert visible in {"0", "1"}, gpu  # exactly one of the node's two fake GPUs
    assert _field(gpu, "SLURM_STEP_GPUS") == visible

    cpu = (tmp_path / "out/cpu.txt").read_text()
    assert _field(cpu, "Partition") == "cpu"
    assert "gres:gpu" not in cpu
    assert _field(cpu, "CUDA_VISIBLE_DEVICES") == "unset"
    assert _field(cpu, "NumTasks") == "2"
    assert _field(cpu, "CPUs/Task") == "1"
    assert _field(cpu, "MinMemoryNode") == "1000M"   # profile default-resources: mem_mb
    assert _field(cpu, "TimeLimit") == "00:30:00"    # profile default-resources: runtime
    assert sorted(re.findall(r"^TASK=(\S+)$", cpu, re.M)) == ["0/2", "1/2"]


# ---- a slice of the miniature grid through `snakemake --profile slurm` ------------------------

SLICE = REPO / "tests" / "configs" / "slurm-slice.yaml"
TIMEOUT = REPO / "tests" / "configs" / "slurm-timeout.yaml"
SFT_STATE = "results/runs/sft-8b/state"
SFT_FINAL = "results/runs/sft-8b/checkpoints/step-6/model.safetensors"


def _grid_cmd(workdir: Path, *extra: str, configfiles=(SLICE,)) -> list[str]:
    return [sys.executable, "-m", "snakemake", "--profile", str(PROFILE), "-s", str(REPO / "Snakefile"),
            "-d", str(workdir), "--configfile", *map(str, configfiles),
            "--slurm-init-seconds-before-status-checks", "2", "--seconds-between-status-checks", "2",
            *extra]


def _grid(workdir: Path, slurm_conf: str, *extra: str, configfiles=(SLICE,), env=None, timeout=600):
    env = dict(os.environ, SLURM_CONF=slurm_conf, **(env or {}))
    run = subprocess.run(_grid_cmd(workdir, *extra, configfiles=configfiles), cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=timeout)
    assert run.returncode == 0, f"{run.stdout[-3000:]}\n{run.stderr[-6000:]}"
    return run


def _jobs() -> list[dict]:
    """Every job squeue still remembers (MinJobAge): id, state, partition, gres, rule."""
    out = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i|%T|%P|%b|%C|%k"], capture_output=True,
                         text=True, check=True).stdout
    rows = []
    for line in out.splitlines():
        job, state, part, gres, cpus, comment = line.split("|", 5)
        rows.append({"id": job, "state": state, "partition": part, "gres": gres, "cpus": int(cpus),
                     "comment": comment})
    return rows


def _show(job: str) -> str:
    return subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def grid_slice(slurm_conf, tmp_path_factory):
    """The slice, run once; the squeue view of its jobs is taken right after (MinJobAge)."""
    workdir = tmp_path_factory.mktemp("slurm-slice")
    before = {j["id"] for j in _jobs()}
    _grid(workdir, slurm_conf, "--retries", "0")
    jobs = [j for j in _jobs() if j["id"] not in before]
    return workdir, jobs


def test_slice_runs_training_diagnostics_evaluation_and_tables_as_slurm_jobs(grid_slice):
    workdir, jobs = grid_slice
    by_rule: dict[str, list[dict]] = {}
    for j in jobs:
        rule = re.match(r"rule_([a-z_]+?)(?:_wildcards_|$)", j["comment"])
        assert rule, j
        by_rule.setdefault(rule.group(1), []).append(j)
    for rule in ("train", "diagnose", "evaluate", "tables", "figures", "claims"):
        assert by_rule.get(rule), f"no Slurm job for rule {rule}: {sorted(by_rule)}"
        assert all(j["state"] == "COMPLETED" for j in by_rule[rule]), by_rule[rule]
    # The GPU rules of this config land on the gpu partition with the GRES they asked for.
    for j in by_rule["train"] + by_rule["evaluate"]:
        assert (j["partition"], j["gres"]) == ("gpu", "gres:gpu:1"), j
    for j in by_rule["diagnose"] + by_rule["tables"]:
        assert j["partition"] == "cpu" and "gpu" not in j["gres"], j
    # opd-8b-t32b asked for 2 tasks: two torchrun agents rendezvoused through srun.
    opd = [j for j in by_rule["train"] if j["comment"].endswith("opd-8b-t32b")]
    assert len(opd) == 1 and opd[0]["cpus"] == 2
    metrics = [json.loads(line) for line in (workdir / "results/runs/opd-8b-t32b/metrics.jsonl").read_text().splitlines()]
    assert [m["world"] for m in metrics] == [2] * 4
    # the GPU rules ran the GPU environment's geopd (.venv-vllm stands in), Snakemake its own (.venv)
    for run in ("sft-8b", "opd-8b-t32b"):
        log = (workdir / f"results/logs/train/{run}.log").read_text()
        assert re.search(rf"geopd train {run}: \S*/\.venv-vllm/bin/python\b", log), log[-2000:]
    assert ".venv-vllm" not in sys.executable
    sft = [json.loads(line) for line in (workdir / "results/runs/sft-8b/metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in sft] == list(range(1, 7)) and {m["world"] for m in sft} == {1}
    for name in ("table1_sparsity.csv", "accuracy.csv", "claims.csv"):
        assert (workdir / "results/tables" / name).stat().st_size > 0
    assert (workdir / "results/figures/training_curves.png").stat().st_size > 0


def _wait_for(predicate, timeout: float, what: str, proc=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"snakemake ended (rc {proc.returncode}) before {what}:\n{out[-2000:]}\n{err[-4000:]}")
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}")


def _train_jobs(run: str) -> list[dict]:
    return [j for j in _jobs() if j["comment"] == f"rule_train_wildcards_{run}"]


def _retrain_sft(workdir: Path, slurm_conf: str, delay: float, configfiles=(SLICE,)) -> subprocess.Popen:
    env = dict(os.environ, SLURM_CONF=slurm_conf, GEOPD_FAULT_STEP_DELAY=str(delay))
    cmd = _grid_cmd(workdir, "--retries", "1", "--forcerun", "train", "--", "results/runs/sft-8b/checkpoints",
                    configfiles=configfiles)
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, timeout: float) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"{out[-3000:]}\n{err[-6000:]}"
    return out + err


def test_scancelled_training_job_resumes_on_retry_with_more_time_and_memory(grid_slice, slurm_conf):
    workdir, _ = grid_slice
    reference = {step: (workdir / f"results/runs/sft-8b/checkpoints/step-{step}/model.safetensors").read_bytes()
                 for step in (3, 6)}
    seen = {j["id"] for j in _train_jobs("sft-8b")}
    proc = _retrain_sft(workdir, slurm_conf, delay=1.5)
    # Kill the job hard (SIGKILL to the batch step and every step) once step 3's state is saved.
    _wait_for(lambda: any((workdir / SFT_STATE).glob("state-00000003")), 240, "the step-3 state", proc)
    first = _wait_for(lambda: [j for j in _train_jobs("sft-8b") if j["id"] not in seen and j["state"] == "RUNNING"],
                      60, "the running train job", proc)[0]
    subprocess.run(["scancel", "--full", "--signal=KILL", first["id"]], check=True)
    _finish(proc, 400)

    jobs = [j for j in _train_jobs("sft-8b") if j["id"] not in seen]
    assert len(jobs) == 2, jobs  # the killed attempt and its retry
    killed, retry = sorted(jobs, key=lambda j: int(j["id"]))
    assert killed["state"] != "COMPLETED" and retry["state"] == "COMPLETED"
    # runtime x attempt (under the default max_runtime), mem_mb x attempt up to max_mem_mb (2000)
    assert _field(_show(killed["id"]), "TimeLimit") == "00:10:00"
    assert _field(_show(retry["id"]), "TimeLimit") == "00:20:00"
    assert _field(_show(killed["id"]), "MinMemoryNode") == "1000M"
    assert _field(_show(retry["id"]), "MinMemoryNode") == "2000M"
    log = (workdir / "results/logs/train/sft-8b.log").read_text()
    # From the step-3 checkpoint, or a later state if the trainer caught a signal before dying.
    resumed = re.search(r"resumed sft-8b from \S+ \(step (\d)\)", log)
    assert resumed and 3 <= int(resumed.group(1)) < 6, log[-2000:]
    for step, blob in reference.items():  # bitwise the uninterrupted run's weights
        assert (workdir / f"results/runs/sft-8b/checkpoints/step-{step}/model.safetensors").read_bytes() == blob
    metrics = [json.loads(line) for line in (workdir / "results/runs/sft-8b/metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, 7))
    assert not (workdir / SFT_STATE).exists()  # resume state dropped once the outputs are in place


def test_time_limit_early_signal_saves_state_and_retry_continues(grid_slice, slurm_conf):
    """The train job asks for USR1 before its time limit (sbatch --signal=USR1@120 from the
    config's signal_lead_s; the plan's lead on a GPU run): the trainer saves a state after the
    step it is in and exits 75 well before the limit, and the retry continues from that state."""
    workdir, _ = grid_slice
    reference = (workdir / SFT_FINAL).read_bytes()
    seen = {j["id"] for j in _train_jobs("sft-8b")}
    # 6 steps x 25 s against a 4-minute limit, USR1 120 s before it. Slurm may send the signal up
    # to 60 s early (sbatch(1); it checks on a ~30 s sweep), so it arrives 60-120 s into the job:
    # before step 6 can end (start-up + 150 s of steps) and, with the step it interrupts (<= 25 s),
    # far from the limit. The retry has 8 minutes, its signal 5-6 min in: at most 5 steps (125 s)
    # plus start-up (~40 s on a loaded CI machine) finish first. History: with SIGTERM at the limit
    # itself, 12 s steps let attempt 1 finish before slurmctld enforced a 1-minute limit, and 20 s
    # steps left the retry too little of its 2 minutes (CI).
    proc = _retrain_sft(workdir, slurm_conf, delay=25, configfiles=(SLICE, TIMEOUT))
    _finish(proc, 900)
    jobs = sorted((j for j in _train_jobs("sft-8b") if j["id"] not in seen), key=lambda j: int(j["id"]))
    # FAILED: it exited 75 on the early signal (a job Slurm stopped at its limit would be TIMEOUT)
    assert [j["state"] for j in jobs] == ["FAILED", "COMPLETED"], jobs
    first = _show(jobs[0]["id"])
    assert _field(first, "TimeLimit") == "00:04:00"
    assert _field(_show(jobs[1]["id"]), "TimeLimit") == "00:08:00"
    minutes, seconds = map(int, _field(first, "RunTime").split(":")[-2:])
    assert 60 * minutes + seconds < 200, first  # stopped on the signal, well before the limit
    log = (workdir / "results/logs/train/sft-8b.log").read_text()
    resumed = re.search(r"resumed sft-8b from \S+ \(step (\d)\)", log)
    assert resumed and 1 <= int(resumed.group(1)) < 6, log[-2000:]
    assert (workdir / SFT_FINAL).read_bytes() == reference


def test_early_signal_reaches_every_rank_through_srun_and_torchrun(slurm_conf, tmp_path):
    """What sbatch --signal=USR1@lead does at its time (scancel --signal without --batch: every
    process of the job's steps, not the batch step), on `geopd launch` with two tasks of one
    torchrun worker each: both workers get USR1 and carry on; torchrun, in between, survives it."""
    probe = REPO / "tests" / "signal_probe.py"
    out = tmp_path / "probe"
    out.mkdir()
    launch = f"{sys.executable} -m geopd.cli launch --nodes 1 --tasks 2 --cpus-per-task 1 -- {probe} {out} 120"
    job = subprocess.run(["sbatch", "--parsable", "-o", str(tmp_path / "job.out"), "--ntasks=2", "--cpus-per-task=1",
                          "-t", "5", "--wrap", launch], capture_output=True, text=True, check=True).stdout.strip()
    try:
        _wait_for(lambda: len(list(out.glob("ready-*"))) == 2, 180, "two workers")
        subprocess.run(["scancel", "--signal=USR1", job], check=True)
        _wait_for(lambda: "COMPLETED" in _field(_show(job), "JobState") or "FAIL" in _field(_show(job), "JobState"),
                  120, "the job's end")
    finally:
        subprocess.run(["scancel", job])
    assert _field(_show(job), "JobState") == "COMPLETED", (tmp_path / "job.out").read_text()[-3000:]
    records = [json.loads(p.read_text()) for p in sorted(out.glob("rank-*.json"))]
    assert [(r["rank"], r["signal"]) for r in records] == [("0", "USR1"), ("1", "USR1")], records
    assert {r["omp"] for r in records} == {"1"}  # --cpus-per-task 1 shared by one worker per task


def _status(workdir: Path) -> dict[str, dict]:
    """`geopd status --json` of the slice, as a user runs it where Snakemake was started."""
    proc = subprocess.run([sys.executable, "-m", "geopd.cli", "status", "--configfile", str(SLICE), "-d", str(workdir),
                           "--json"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {s["run"]: s for s in map(json.loads, proc.stdout.splitlines())}


def test_geopd_status_follows_a_run_through_the_queue(grid_slice, slurm_conf):
    """Both runs done; then sft-8b retrained while a job holds both GPUs: queued (Slurm's reason),
    running with its step, speed, ETA and job once the GPUs are free, done at the end."""
    workdir, _ = grid_slice
    assert {r: (s["state"], s["step"]) for r, s in _status(workdir).items()} == \
        {"sft-8b": ("done", 6), "opd-8b-t32b": ("done", 4)}
    blocker = subprocess.run(["sbatch", "--parsable", "-p", "gpu", "--gres=gpu:2", "-c", "1", "--mem", "100",
                              "-t", "10", "--wrap", "sleep 600"], capture_output=True, text=True, check=True).stdout.strip()
    try:
        proc = _retrain_sft(workdir, slurm_conf, delay=2)
        queued = _wait_for(lambda: (lambda s: s if s["state"] == "queued" else None)(_status(workdir)["sft-8b"]),
                           120, "geopd status: sft-8b queued", proc)
        assert "PENDING" in queued["slurm"], queued
    finally:
        subprocess.run(["scancel", blocker], check=True)
    running = _wait_for(lambda: (lambda s: s if s["state"] == "running" and (s["step"] or 0) >= 2 else None)(
        _status(workdir)["sft-8b"]), 240, "geopd status: sft-8b running past step 2", proc)
    job = running["slurm"].split()[0]
    assert running["slurm"] == f"{job} RUNNING" and [j["state"] for j in _jobs() if j["id"] == job] == ["RUNNING"]
    assert running["s_per_step"] >= 2 and running["eta_s"] is not None and running["steps"] == 6
    assert running["evals"].startswith("2/2")  # sft-8b's evaluations from the first pass are still there
    _finish(proc, 400)
    assert {r: (s["state"], s["step"]) for r, s in _status(workdir).items()} == \
        {"sft-8b": ("done", 6), "opd-8b-t32b": ("done", 4)}
