"""How the train rule's command is launched: 1 process, torchrun, srun + torchrun per node."""
import shlex
import subprocess
import sys

from geopd.cli import main
from geopd.launch import INSIDE, plan, rendezvous_port

CMD = ["geopd", "train", "--spec", "{}"]


def test_single_process_runs_command_as_is():
    assert plan(CMD, 1, 0, {}) == CMD
    assert plan(CMD, 1, 1, {"SLURM_JOB_ID": "5"}) == CMD
    assert plan(CMD, 1, 0, {"SLURM_JOB_ID": "5"}, tasks=1) == CMD


def test_one_node_many_gpus_is_standalone_torchrun():
    line = plan(CMD, 1, 4, {})
    assert line[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--nproc-per-node=4" in line and "--standalone" in line
    assert line[-5:] == ["-m", "geopd.cli", "train", "--spec", "{}"]
    # Inside a Slurm job step that holds the node's GPUs: the same, no second srun.
    assert plan(CMD, 1, 4, {"SLURM_JOB_ID": "7"}) == line


def test_cpu_tasks_without_slurm_are_standalone_gloo_workers():
    line = plan(CMD, 1, 0, {}, tasks=2)
    assert "--nproc-per-node=2" in line and "--standalone" in line


def test_under_slurm_launch_starts_one_srun_task_per_node():
    line = plan(CMD, 3, 8, {"SLURM_JOB_ID": "1234"})
    assert line[:4] == ["srun", "--nodes=3", "--ntasks=3", "--kill-on-bad-exit=1"]
    assert f"--export=ALL,{INSIDE}=1" in line
    assert line[-5:] == ["--", *CMD] and "--gpus-per-node=8" in line and "--tasks=3" in line


def test_two_tasks_on_one_node_are_two_rendezvous_agents():
    line = plan(CMD, 1, 0, {"SLURM_JOB_ID": "99"}, tasks=2)
    assert line[:4] == ["srun", "--nodes=1", "--ntasks=2", "--kill-on-bad-exit=1"]
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


def test_launch_command_line_prints_the_plan(capsys):
    assert main(["launch", "--dry-run", "--nodes", "1", "--gpus-per-node", "2", "--", *CMD]) == 0
    assert shlex.split(capsys.readouterr().out) == plan(CMD, 1, 2, {})


def test_python_m_geopd_cli_runs_a_command():
    """What torchrun and srun start (`python -m geopd.cli ...`): the same command line."""
    proc = subprocess.run([sys.executable, "-m", "geopd.cli", "launch", "--dry-run", "--", *CMD],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert shlex.split(proc.stdout) == CMD
