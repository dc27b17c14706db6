"""What this machine offers the sandbox, and which isolation mode a run gets.

bubblewrap, Landlock and libseccomp are found once per process; `summary` is what results
files record, `_resolve_mode` turns a requested mode into the one that runs (or raises
SandboxUnavailable), and `seccomp_program` compiles the syscall filter.
"""
from __future__ import annotations

import errno
import functools
import logging
import os
import shutil
import subprocess
import tempfile

logger = logging.getLogger("geopd.sandbox")

MODES = ("auto", "bwrap", "landlock", "hook")
_BWRAP_PID = 2  # bubblewrap's init is pid 1 of the new pid namespace, the program pid 2


class SandboxUnavailable(RuntimeError):
    """The requested isolation mode cannot run on this machine."""


def is_isolated(layers) -> bool:
    """Confined by the kernel: a filesystem layer and the syscall filter."""
    layers = set(layers)
    return "seccomp" in layers and bool(layers & {"bwrap", "landlock"})



# Refused with EPERM (a few with their own errno) whatever their arguments.
_DENY = (
    "fork", "vfork", "execve", "execveat", "socket", "ptrace", "process_vm_readv", "process_vm_writev",
    "pidfd_open", "pidfd_getfd", "pidfd_send_signal", "kcmp", "tkill", "mount", "umount2", "pivot_root",
    "chroot", "unshare", "setns", "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick",
    "mount_setattr", "keyctl", "add_key", "request_key", "bpf", "perf_event_open", "userfaultfd",
    "io_uring_setup", "io_uring_enter", "io_uring_register", "kexec_load", "kexec_file_load", "init_module",
    "finit_module", "delete_module", "reboot", "swapon", "swapoff", "acct", "syslog", "quotactl",
    "open_by_handle_at", "name_to_handle_at", "iopl", "ioperm", "setrlimit", "settimeofday", "clock_settime",
    "clock_adjtime", "adjtimex", "sethostname", "setdomainname", "vhangup", "mknod", "mknodat", "chmod",
    "fchmod", "fchmodat", "fchmodat2", "chown", "fchown", "lchown", "fchownat", "setuid", "setgid",
    "setreuid", "setregid", "setresuid", "setresgid", "setfsuid", "setfsgid", "setgroups", "capset",
    "memfd_create", "memfd_secret", "shmget", "msgget", "semget", "mq_open", "fanotify_init",
    "lookup_dcookie", "personality", "landlock_create_ruleset",
)
_CLONE_THREAD = 0x00010000
_TIOCSTI, _TIOCLINUX = 0x5412, 0x541C


def _seccomp_module():
    for name in ("seccomp", "pyseccomp"):  # libseccomp's own bindings, else their ctypes port
        try:
            return __import__(name)
        except (ImportError, RuntimeError, OSError):
            continue
    return None


@functools.lru_cache(maxsize=64)
def seccomp_program(pid: int) -> bytes | None:
    """The BPF program (libseccomp-compiled) for a sandboxed process whose pid is `pid`,
    or None where libseccomp or its bindings are missing."""
    sc = _seccomp_module()
    if sc is None:
        return None
    f = sc.SyscallFilter(sc.ALLOW)
    eperm = sc.ERRNO(errno.EPERM)
    for name in _DENY:
        try:
            f.add_rule(eperm, name)
        except (ValueError, RuntimeError, OSError):
            pass  # not a syscall on this architecture
    # Threads only: a clone without CLONE_THREAD would be a new process. clone3 passes its
    # flags in memory the filter cannot read, so it is ENOSYS and libc falls back to clone.
    f.add_rule(eperm, "clone", sc.Arg(0, sc.MASKED_EQ, _CLONE_THREAD, 0))
    f.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    for name, arg in (("kill", 0), ("tgkill", 0), ("rt_sigqueueinfo", 0), ("rt_tgsigqueueinfo", 0)):
        f.add_rule(eperm, name, sc.Arg(arg, sc.NE, pid))  # signals to ourselves only
    f.add_rule(eperm, "prlimit64", sc.Arg(2, sc.NE, 0))  # reading limits is fine, setting is not
    for request in (_TIOCSTI, _TIOCLINUX):
        f.add_rule(eperm, "ioctl", sc.Arg(1, sc.MASKED_EQ, 0xFFFFFFFF, request))
    with tempfile.TemporaryFile() as fh:
        f.export_bpf(fh)
        fh.seek(0)
        return fh.read()


@functools.lru_cache(maxsize=1)
def _landlock_abi() -> int:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        return max(0, int(libc.syscall(444, None, 0, 1)))
    except (OSError, AttributeError):
        return 0


@functools.lru_cache(maxsize=1)
def _bwrap_works() -> str | None:
    """Why bubblewrap cannot run here, or None when it can."""
    exe = shutil.which("bwrap")
    if exe is None:
        return "bubblewrap (bwrap) is not installed (scripts/install-sandbox-deps.sh installs it)"
    args = [exe, *_bwrap_ns_args(os.geteuid() == 0), "--ro-bind", "/", "/", "--proc", "/proc", "--", "/bin/true"]
    try:
        r = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bubblewrap does not start ({exc})"
    if r.returncode != 0:
        return f"bubblewrap cannot create namespaces here: {r.stderr.decode(errors='replace').strip()[:300]}"
    return None


def capabilities() -> dict:
    """What the kernel layers need, as found on this machine."""
    return {"bwrap": _bwrap_works() is None, "bwrap_problem": _bwrap_works(), "landlock_abi": _landlock_abi(),
            "seccomp": seccomp_program(_BWRAP_PID) is not None, "root": os.geteuid() == 0}


def summary(mode: str = "auto") -> dict:
    """What a run in `mode` gets on this machine, for results files: {"mode", "isolated",
    "why"} (why: what is missing when it does not isolate)."""
    resolved = _resolve_mode(mode)
    isolated = resolved in ("bwrap", "landlock")
    why = None if isolated else (f"{_bwrap_works() or 'bubblewrap works'}; Landlock ABI {_landlock_abi()}; "
                                 f"libseccomp bindings {'found' if _seccomp_module() else 'missing'}")
    return {"mode": resolved, "isolated": isolated, "why": why}


def _resolve_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"sandbox mode must be one of {MODES}, got {mode!r}")
    if mode == "bwrap" and _bwrap_works() is not None:
        raise SandboxUnavailable(_bwrap_works())
    if mode == "landlock" and not _landlock_abi():
        raise SandboxUnavailable("this kernel has no Landlock (Linux >= 5.13 with the LSM enabled)")
    if mode in ("bwrap", "landlock") and seccomp_program(_BWRAP_PID) is None:
        raise SandboxUnavailable("libseccomp or its Python bindings are missing "
                                 "(scripts/install-sandbox-deps.sh installs them)")
    if mode == "auto":
        if _bwrap_works() is None and seccomp_program(_BWRAP_PID) is not None:
            return "bwrap"
        if _landlock_abi() and seccomp_program(_BWRAP_PID) is not None:
            return "landlock"
        mode = "hook"
    if mode == "hook":
        _warn_unisolated()
    return mode


@functools.lru_cache(maxsize=1)
def _warn_unisolated() -> None:
    logger.warning("the code sandbox cannot isolate programs on this machine (%s; Landlock ABI %d; "
                   "libseccomp %s): only rlimits and an in-process audit hook hold them; results say "
                   "isolated=false", _bwrap_works() or "bwrap ok", _landlock_abi(),
                   "found" if _seccomp_module() else "missing")


def _bwrap_ns_args(as_root: bool) -> list[str]:
    ns = ["--die-with-parent", "--new-session", "--unshare-pid", "--unshare-net", "--unshare-ipc",
          "--unshare-uts", "--unshare-cgroup-try"]
    if as_root:
        # Privileged: no user namespace; the bootstrap keeps these two only to drop to the
        # run's random uid before any program code runs.
        return ns + ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    return ns + ["--unshare-user", "--disable-userns"]
