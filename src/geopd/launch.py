"""How `geopd launch -- CMD ...` starts a training command on 1 process, 1 node, or many nodes
(the command line is geopd.cli.launch; `plan` is the pure part, tested without Slurm).

The train rule always runs `geopd launch --nodes N --tasks T --gpus-per-node G -- geopd train ...`
with N, T, G from the run's resources (T = N unless set: one torchrun agent per node):
- T = 1 and at most 1 GPU (the miniature CPU grid): CMD runs as is;
- T = 1 and several GPUs (one node, under Slurm or not): `torchrun --standalone
  --nproc-per-node G` inside the job step the executor started (it holds all the node's GPUs);
- T > 1 under Slurm: the rule carries the resource `mpi="srun"`, so the executor's job-step
  plugin runs the rule's shell in the batch step itself (not in an `srun -n1` step, inside
  which a second srun would wait for CPUs it already holds) and sbatch asks for --ntasks T.
  launch starts `srun --nodes N --ntasks T geopd launch ...`, and inside each task builds the
  torchrun rendezvous from the allocation: node rank = SLURM_PROCID, the master address = the
  first host of SLURM_JOB_NODELIST (`scontrol show hostnames`), a port derived from the job
  id, and G*N/T workers per task (at least 1: CPU tasks run one gloo worker each);
- T > 1 without Slurm: `torchrun --standalone --nproc-per-node T` (CPU/gloo tests).
torchrun spawns the workers with RANK/WORLD_SIZE/LOCAL_RANK set, which the trainer reads
(FSDP2 over all workers).
"""
from __future__ import annotations

import os
import subprocess
import sys

INSIDE = "GEOPD_LAUNCH_TASK"  # set on the srun tasks that launch started


def rendezvous_port(job_id: str | None) -> int:
    # Distinct jobs on shared nodes must not collide; stay in the unprivileged range.
    return 20000 + (int(job_id) % 20000 if job_id and job_id.isdigit() else 9)


def first_host(nodelist: str) -> str:
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True,
                             text=True, check=True, timeout=30).stdout.split()
        return out[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        # A single plain hostname needs no expansion; bracket ranges do.
        if "[" in nodelist or "," in nodelist:
            raise RuntimeError(f"cannot expand SLURM_JOB_NODELIST={nodelist!r} without scontrol") from None
        return nodelist


def torchrun(cmd: list[str], *, nnodes: int, node_rank: int, nproc: int, master: str, port: int,
             standalone: bool = False) -> list[str]:
    """torchrun around `geopd ...` (run as a module so torchrun needs no script path)."""
    if cmd and os.path.basename(cmd[0]) == "geopd":
        target = ["-m", "geopd.cli", *cmd[1:]]
    else:
        target = cmd
    run = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}"]
    if standalone:
        run.append("--standalone")
    else:
        run += [f"--nnodes={nnodes}", f"--node-rank={node_rank}", f"--master-addr={master}",
                f"--master-port={port}"]
    return run + target


def plan(cmd: list[str], nodes: int, gpus_per_node: int, env: dict, tasks: int | None = None) -> list[str]:
    """The command line launch will exec, from the allocation in `env` (pure: testable)."""
    tasks = max(int(tasks or nodes), nodes)
    per_task = max(1, (gpus_per_node * nodes) // tasks)
    if env.get(INSIDE) == "1":
        node_rank = int(env.get("SLURM_PROCID", env.get("SLURM_NODEID", "0")))
        return torchrun(cmd, nnodes=tasks, node_rank=node_rank, nproc=per_task,
                        master=first_host(env["SLURM_JOB_NODELIST"]),
                        port=rendezvous_port(env.get("SLURM_JOB_ID")))
    if tasks == 1:
        if gpus_per_node <= 1:
            return cmd
        return torchrun(cmd, nnodes=1, node_rank=0, nproc=gpus_per_node, master="127.0.0.1", port=0,
                        standalone=True)
    if env.get("SLURM_JOB_ID"):
        me = [sys.executable, "-m", "geopd.cli", "launch", f"--nodes={nodes}", f"--tasks={tasks}",
              f"--gpus-per-node={gpus_per_node}", "--", *cmd]
        return ["srun", f"--nodes={nodes}", f"--ntasks={tasks}", "--kill-on-bad-exit=1",
                f"--export=ALL,{INSIDE}=1", *me]
    if nodes == 1:
        return torchrun(cmd, nnodes=1, node_rank=0, nproc=tasks * per_task, master="127.0.0.1", port=0,
                        standalone=True)
    raise SystemExit(f"geopd launch: {nodes} nodes requested but no Slurm allocation (SLURM_JOB_ID unset)")
