"""How `geopd launch -- CMD ...` starts a training command on 1 process, 1 node, or many nodes
(the command line is geopd.cli.launch; `plan` is the pure part, tested without Slurm).

The train rule always runs `geopd launch --nodes N --tasks T --gpus-per-node G --cpus-per-task C
-- geopd train ...` with N, T, G, C from the run's resources (T = N unless set: one torchrun agent
per node; C the CPUs of one task, Slurm's --cpus-per-task):
- under Slurm (SLURM_JOB_ID set), always one job step: the rule carries the resource `mpi`, so
  the executor's job-step plugin runs the rule's shell in the batch step itself (not in an
  `srun -n1` step, inside which a second srun would wait for CPUs it already holds; sbatch asks
  for --ntasks T when T > 1), and launch starts `srun --nodes N --ntasks T --cpus-per-task C
  geopd launch ...`: since Slurm 22.05 srun does not inherit the job's --cpus-per-task, and
  without it a node's ranks could share one CPU. Inside each task launch builds the torchrun
  rendezvous from the allocation (node rank = SLURM_PROCID, the master address = the first host of
  SLURM_JOB_NODELIST via `scontrol show hostnames`, a port derived from the job id) with G*N/T
  workers per task (at least 1: CPU tasks run one gloo worker each); one task with at most one
  GPU runs CMD itself. Training always runs in a job step so that Slurm's early signal reaches it
  (below).
- without Slurm: at most 1 GPU and one task, CMD as is; else `torchrun --standalone` with G (or
  T CPU) workers.
torchrun spawns the workers with RANK/WORLD_SIZE/LOCAL_RANK/LOCAL_WORLD_SIZE set, which the
trainer reads (FSDP2 over all workers). Each worker computes with C / (workers per task) threads
(`threads_per_rank`; launch exports it as OMP_NUM_THREADS, and `geopd train --threads C` divides
by LOCAL_WORLD_SIZE the same way).

Signals (sbatch --signal=USR1@lead on training jobs: geopd.workflow). Slurm sends USR1 to every
process of every job step, but not to the batch step; with the "B:" form it would go to the batch
shell alone, which is the executor plugin's `sh` script: it dies of it and takes the job with it
(measured on the local cluster, Slurm 22.05: "WTERMSIG 10"). With process tracking by process
group (proctrack/pgid, the local cluster) only the task's group gets it, and torchrun starts each
worker in a session of its own; torchrun itself does not handle USR1 (its handlers, for
TERM/INT/HUP/QUIT, shut the workers down and SIGKILL them 30 s later), so Python's default
action would kill it. Hence launch runs torchrun as a child with USR1 ignored (inherited by
torchrun and its workers; the trainer installs its own handler) and relays USR1 to every process
below it, and passes TERM/INT/HUP on to torchrun, which stops its workers as before.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys

INSIDE = "GEOPD_LAUNCH_TASK"  # set on the srun tasks that launch started
RELAYED = signal.SIGUSR1     # Slurm's early warning (sbatch --signal), to every worker
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)  # to torchrun, which stops its workers


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


def threads_per_rank(cpus: int | None, ranks: int) -> int | None:
    """CPU threads of each of `ranks` processes sharing `cpus` CPUs (at least 1; None: not set)."""
    return None if cpus is None else max(1, cpus // max(1, ranks))


def torchrun(cmd: list[str], *, nnodes: int, node_rank: int, nproc: int, master: str, port: int,
             standalone: bool = False) -> list[str]:
    """torchrun around `geopd ...` (run as a module so torchrun needs no script path) or a script."""
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


def plan(cmd: list[str], nodes: int, gpus_per_node: int, env: dict, tasks: int | None = None,
         cpus_per_task: int | None = None) -> list[str]:
    """The command line launch will run, from the allocation in `env` (pure: testable)."""
    tasks = max(int(tasks or nodes), nodes)
    per_task = max(1, (gpus_per_node * nodes) // tasks)
    if env.get(INSIDE) == "1":
        if tasks == 1 and per_task == 1:
            return cmd
        node_rank = int(env.get("SLURM_PROCID", env.get("SLURM_NODEID", "0")))
        return torchrun(cmd, nnodes=tasks, node_rank=node_rank, nproc=per_task,
                        master=first_host(env["SLURM_JOB_NODELIST"]),
                        port=rendezvous_port(env.get("SLURM_JOB_ID")))
    if env.get("SLURM_JOB_ID"):
        me = [sys.executable, "-m", "geopd.cli", "launch", f"--nodes={nodes}", f"--tasks={tasks}",
              f"--gpus-per-node={gpus_per_node}"]
        line = ["srun", f"--nodes={nodes}", f"--ntasks={tasks}"]
        export = f"--export=ALL,{INSIDE}=1"
        if cpus_per_task is not None:
            line.append(f"--cpus-per-task={cpus_per_task}")
            me.append(f"--cpus-per-task={cpus_per_task}")
            export += f",OMP_NUM_THREADS={threads_per_rank(cpus_per_task, per_task)}"
        return [*line, "--kill-on-bad-exit=1", export, *me, "--", *cmd]
    if tasks == 1:
        if gpus_per_node <= 1:
            return cmd
        return torchrun(cmd, nnodes=1, node_rank=0, nproc=gpus_per_node, master="127.0.0.1", port=0,
                        standalone=True)
    if nodes == 1:
        return torchrun(cmd, nnodes=1, node_rank=0, nproc=tasks * per_task, master="127.0.0.1", port=0,
                        standalone=True)
    raise SystemExit(f"geopd launch: {nodes} nodes requested but no Slurm allocation (SLURM_JOB_ID unset)")


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (Linux /proc), parents before children."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, stack = [], list(children.get(pid, []))
    while stack:
        p = stack.pop(0)
        out.append(p)
        stack.extend(children.get(p, []))
    return out


def run_relaying(line: list[str]) -> int:
    """Run `line` (torchrun) as a child, USR1 ignored in it and relayed to every process below it,
    TERM/INT/HUP passed on; its exit status (128 + N when a signal N ended it)."""
    previous = signal.signal(RELAYED, signal.SIG_IGN)  # inherited across fork and exec
    try:
        child = subprocess.Popen(line)
    except BaseException:
        signal.signal(RELAYED, previous)
        raise
    # Ignored until `relay` is installed below, never back to the default action in between: a
    # USR1 then would end this launcher and leave torchrun running.

    def relay(signum, frame):
        for pid in [child.pid, *descendants(child.pid)]:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    def forward(signum, frame):
        child.send_signal(signum)

    signal.signal(RELAYED, relay)
    for sig in FORWARDED:
        signal.signal(sig, forward)
    code = child.wait()
    return 128 - code if code < 0 else code
