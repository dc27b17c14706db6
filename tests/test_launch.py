"""How the train rule's command is launched: 1 process, torchrun, srun + torchrun per node; the
CPUs each task and rank gets; and Slurm's early signal reaching every worker through torchrun
(tests/test_slurm_cluster.py: through srun too, on the local cluster)."""
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from geopd.cli import main
from geopd.launch import INSIDE, plan, rendezvous_port, threads_per_rank

CMD = ["geopd", "train", "--spec", "{}"]
PROBE = Path(__file__).with_name("signal_probe.py")


def test_single_process_runs_command_as_is():
    assert plan(CMD, 1, 0, {}) == CMD
    assert plan(CMD, 1, 1, {}) == CMD
    # inside the job step launch started under Slurm: one task with at most one GPU runs the command
    assert plan(CMD, 1, 1, {INSIDE: "1", "SLURM_JOB_ID": "5"}) == CMD
    assert plan(CMD, 1, 0, {INSIDE: "1", "SLURM_JOB_ID": "5"}, tasks=1) == CMD


def test_one_node_many_gpus_is_standalone_torchrun():
    line = plan(CMD, 1, 4, {})
    assert line[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--nproc-per-node=4" in line and "--standalone" in line
    assert line[-5:] == ["-m", "geopd.cli", "train", "--spec", "{}"]


def test_cpu_tasks_without_slurm_are_standalone_gloo_workers():
    line = plan(CMD, 1, 0, {}, tasks=2)
    assert "--nproc-per-node=2" in line and "--standalone" in line


def test_under_slurm_training_always_runs_in_a_job_step_with_its_cpus():
    """Slurm's early signal goes to job steps only, and srun (Slurm >= 22.05) does not inherit
    --cpus-per-task: even one process is started by srun, with the task's CPUs."""
    for nodes, gpus in ((1, 0), (1, 1), (1, 8), (3, 8)):
        line = plan(CMD, nodes, gpus, {"SLURM_JOB_ID": "1234"}, cpus_per_task=64)
        assert line[:4] == ["srun", f"--nodes={nodes}", f"--ntasks={nodes}", "--cpus-per-task=64"]
        assert "--kill-on-bad-exit=1" in line and line[-5:] == ["--", *CMD]
        assert f"--gpus-per-node={gpus}" in line and f"--tasks={nodes}" in line and "--cpus-per-task=64" in line[4:]
        # threads per rank = CPUs per task / ranks per task (8 GPUs: 8 ranks share 64 CPUs)
        assert f"--export=ALL,{INSIDE}=1,OMP_NUM_THREADS={64 // max(1, gpus)}" in line


def test_threads_per_rank_share_the_tasks_cpus():
    assert threads_per_rank(64, 8) == 8 and threads_per_rank(64, 1) == 64
    assert threads_per_rank(4, 8) == 1 and threads_per_rank(None, 8) is None


def test_two_tasks_on_one_node_are_two_rendezvous_agents():
    line = plan(CMD, 1, 0, {"SLURM_JOB_ID": "99"}, tasks=2)
    assert line[:3] == ["srun", "--nodes=1", "--ntasks=2"]
    inside = {INSIDE: "1", "SLURM_PROCID": "1", "SLURM_NODEID": "0", "SLURM_JOB_NODELIST": "n1",
              "SLURM_JOB_ID": "99"}
    line = plan(CMD, 1, 0, inside, tasks=2)
    assert "--nnodes=2" in line and "--node-rank=1" in line and "--nproc-per-node=1" in line


def test_inside_srun_task_builds_rendezvous_from_allocation():
    env = {INSIDE: "1", "SLURM_PROCID": "2", "SLURM_NODEID": "2", "SLURM_JOB_NODELIST": "gpu-node-a",
           "SLURM_JOB_ID": "1234"}
    line = plan(CMD, 3, 8, env)
    assert "--nnodes=3" in line and "--node-rank=2" in line and "--nproc-per-node=8" in line
    assert "--master-addr=gpu-node-a" in line and f"--master-port={rendezvous_port('1234')}" in line
    assert rendezvous_port("1234") != rendezvous_port("1235")
    assert plan(CMD, 1, 8, dict(env, SLURM_PROCID="0")) [-5:] == ["-m", "geopd.cli", "train", "--spec", "{}"]


def test_launch_command_line_prints_the_plan(capsys, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.delenv(INSIDE, raising=False)
    assert main(["launch", "--dry-run", "--nodes", "2", "--gpus-per-node", "8", "--cpus-per-task", "64",
                 "--", *CMD]) == 0
    printed = shlex.split(capsys.readouterr().out)
    assert printed == plan(CMD, 2, 8, {"SLURM_JOB_ID": "77"}, cpus_per_task=64)
    assert "--cpus-per-task=64" in printed and f"--export=ALL,{INSIDE}=1,OMP_NUM_THREADS=8" in printed


def test_python_m_geopd_cli_runs_a_command():
    """What torchrun and srun start (`python -m geopd.cli ...`): the same command line."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    proc = subprocess.run([sys.executable, "-m", "geopd.cli", "launch", "--dry-run", "--", *CMD],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert shlex.split(proc.stdout) == CMD


def _wait(predicate, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_usr1_reaches_every_torchrun_worker_and_torchrun_survives(tmp_path):
    """torchrun starts each worker in a session of its own and does not handle USR1 (Python's
    default would end it); launch runs it with USR1 ignored and relays the signal to every
    worker, which carries on (here: records it and exits 0)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k != INSIDE}
    proc = subprocess.Popen([sys.executable, "-m", "geopd.cli", "launch", "--tasks", "2", "--",
                             str(PROBE), str(tmp_path)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        _wait(lambda: len(list(tmp_path.glob("ready-*"))) == 2 or proc.poll() is not None, 120, "two workers")
        assert proc.poll() is None, proc.communicate()
        os.kill(proc.pid, signal.SIGUSR1)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    records = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("rank-*.json"))]
    assert [r["rank"] for r in records] == ["0", "1"]
    assert all(r["signal"] == "USR1" for r in records), records
    assert len({r["sid"] for r in records}) == 2  # each in a session of its own, yet reached
