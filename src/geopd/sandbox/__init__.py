"""Run untrusted, model-written Python programs, isolated by the kernel.

One sandboxed interpreter runs one program: `run_program` feeds it stdin and returns
what it printed; `Session` keeps it alive for many requests (all tests of one program,
as LiveCodeBench's runner does), each timed by the grader. `RunResult.isolation` and
`Session.isolation` list the layers a run actually got; `isolated` says whether the
kernel confined it.

What it protects against (with the kernel layers, i.e. `isolated`): a program that tries to
read or change anything of the host outside its own directory (home directories, the
repository, the test files and expected outputs, other runs), to reach the network or any
socket, to start processes or signal, trace or read the memory of other ones, to raise its
limits, or to run longer, use more memory, disk, files or output than it is given; and a
program that dies, hangs, floods its output or forges protocol replies: each of these ends
as a verdict, never as a crash or a hang of the grader. When a run ends, everything it
started ends with it.

What it does not protect against: a bug in the kernel (the namespaces, Landlock and seccomp
are the host kernel's; a kernel exploit escapes all of them); reading what is exposed on
purpose (the interpreter's own directories, site-packages included, and the OS libraries);
the program's view of the clock, the CPU and /dev/urandom; load it puts on what the host
shares (CPU while it runs, memory up to its limit, page cache); anything on a machine where
the kernel layers are missing: "hook" mode (rlimits and an in-process audit hook, which a
determined program can get around) confines nothing, says so (`isolated` is False) and
exists for machines that offer nothing else and for tests. The layers need Linux; elsewhere
only "hook" runs.

Kernel layers (the program cannot undo these from Python):
  bwrap      bubblewrap (the OS package) builds a fresh mount, pid, network, IPC, UTS and
             cgroup namespace. Only the interpreter's own directories and the OS
             libraries are mounted, read-only; the program's directory is a tmpfs of
             bounded size (disk); /proc shows only the sandbox; nothing else of the host
             (home directories, the repository, test files, /tmp) exists in it. When the
             run ends the pid namespace dies, and every process in it with it.
             As root bubblewrap runs privileged and the program then runs under a fresh
             random uid with no groups (`uid`); otherwise bubblewrap makes an
             unprivileged user namespace (`userns`).
  seccomp    a filter compiled by libseccomp (its Python bindings, `seccomp` or the
             ctypes port `pyseccomp`) refuses: creating processes (fork, vfork, clone
             without CLONE_THREAD; threads are fine), exec, every socket (TCP, UDP,
             path and abstract unix), signals to any other process (kill, tgkill, pidfd),
             ptrace and cross-process memory access, namespaces and mounts, io_uring,
             bpf, keyrings, SysV/POSIX IPC, memfd, raising resource limits, chmod/chown
             and uid changes, terminal injection. With one process per run, RLIMIT_AS
             bounds the run's total memory and the process count is one.
  landlock   Landlock (Linux >= 5.13) allows reading only the exposed directories and
             writing only the program's directory (and /dev/null); with ABI >= 6 it also
             scopes signals and abstract unix sockets to the sandbox. Without bubblewrap
             the directory is on the host's disk, which nothing bounds: it is read-only.
  rlimits    RLIMIT_AS (memory), RLIMIT_CPU (a backstop; the grader times each request),
             RLIMIT_FSIZE, RLIMIT_NOFILE, RLIMIT_CORE=0, RLIMIT_NPROC (as the random uid).
In-process, a second line only:
  audit-hook an audit hook installed before the program runs refuses writes outside its
             directory, foreign /proc entries, fork/exec, signals to others, sockets,
             ctypes calls, sub-interpreters, rlimit changes and tracing hooks.

Modes: "auto" takes bwrap when it works here, else Landlock without namespaces;
"bwrap" and "landlock" insist on theirs (SandboxUnavailable otherwise); "hook" uses only
rlimits and the audit hook: it does NOT isolate (`isolated` is False, and a warning is
logged once), and exists for machines that offer nothing else and for tests.

Output: `run_program` keeps stdout up to max_output_bytes (then the run is stopped:
"output_limit"); a `Session`'s replies are capped the same way, and what its program writes
to fd 1 is kept as head and tail like stderr, STDERR_KEEP bytes however much is written.

Modules: machine (what this machine offers; the mode a run gets), process (one sandboxed
interpreter), run (`run_program`, `run_batch`), session (`Session`), programs (the guest
programs in guest/, which run inside the sandbox).
"""
from geopd.sandbox.machine import MODES, SandboxUnavailable, capabilities, is_isolated, summary
from geopd.sandbox.process import STDERR_KEEP
from geopd.sandbox.programs import RUNNER_LIB
from geopd.sandbox.run import RunResult, run_batch, run_program
from geopd.sandbox.session import Reply, Session, frame

__all__ = ["MODES", "RUNNER_LIB", "STDERR_KEEP", "Reply", "RunResult", "SandboxUnavailable", "Session",
           "capabilities", "frame", "is_isolated", "run_batch", "run_program", "summary"]
