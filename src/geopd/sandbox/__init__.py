"""Run untrusted, model-written Python programs, isolated by the kernel.

One sandboxed interpreter runs one program: `run_program` feeds it stdin and returns
what it printed; `Session` keeps it alive for many requests (all tests of one program,
as LiveCodeBench's runner does), each timed by the grader. `RunResult.isolation` and
`Session.isolation` list the layers a run actually got; `isolated` says whether the
kernel confined it.

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
"""
from __future__ import annotations

import base64
import errno
import functools
import json
import logging
import math
import os
import random
import re
import selectors
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

STDERR_KEEP = 16 * 1024  # bytes of stderr kept, as head and tail halves
MODES = ("auto", "bwrap", "landlock", "hook")
SANDBOX_DIR = "/sandbox"  # the program's directory inside bubblewrap
_UID_RANGE = (1 << 24, (1 << 31) - 2)  # above any uid a distro or a subuid range hands out
_HEADER_MAX = 1 << 20
_BWRAP_PID = 2  # bubblewrap's init is pid 1 of the new pid namespace, the program pid 2


class SandboxUnavailable(RuntimeError):
    """The requested isolation mode cannot run on this machine."""


@dataclass
class RunResult:
    """status: ok | timeout | memory | runtime_error | killed | output_limit | sandbox_error."""

    status: str
    returncode: int | None
    stdout: str
    stderr: str
    wall_s: float
    cpu_s: float = 0.0
    isolation: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def isolated(self) -> bool:
        return is_isolated(self.isolation)


def is_isolated(layers) -> bool:
    """Confined by the kernel: a filesystem layer and the syscall filter."""
    layers = set(layers)
    return "seccomp" in layers and bool(layers & {"bwrap", "landlock"})


# ---- the program-side bootstrap ----------------------------------------------------------
#
# Runs as `python -I -B -X utf8 -c BOOT <cfg fd>` inside the sandbox, before any program
# code, with the program's directory as cwd. Standard library only; a layer that fails is
# reported (the grader decides whether that is acceptable), never silently skipped.

_BOOT = r'''
import json, os, sys
with os.fdopen(int(sys.argv[1]), "rb") as _fh:
    cfg = json.loads(_fh.read())
sys.argv = ["main.py"] + ([str(cfg["reply_fd"])] if cfg["reply_fd"] >= 0 else [])
info = {"layers": [], "errors": []}

import resource
def _limit(res, soft, hard=None):
    try:
        resource.setrlimit(res, (soft, soft if hard is None else hard))
    except (ValueError, OSError) as exc:
        info["errors"].append("rlimit %s: %s" % (res, exc))
_limit(resource.RLIMIT_CPU, cfg["cpu_s"], cfg["cpu_s"] + 1)
_limit(resource.RLIMIT_AS, cfg["memory_bytes"])
_limit(resource.RLIMIT_FSIZE, cfg["file_bytes"])
_limit(resource.RLIMIT_NOFILE, cfg["nofile"])
_limit(resource.RLIMIT_CORE, 0)
_limit(resource.RLIMIT_MSGQUEUE, 0)
_limit(resource.RLIMIT_MEMLOCK, 0)
if cfg["nproc"] is not None:
    _limit(resource.RLIMIT_NPROC, cfg["nproc"])
info["layers"].append("rlimits")

if cfg["uid"] is not None:
    try:
        u = cfg["uid"]
        os.setgroups([])
        os.setresgid(u, u, u)
        os.setresuid(u, u, u)
        info["layers"].append("uid")
    except OSError as exc:
        info["errors"].append("uid: %s" % exc)
elif cfg["userns"]:
    info["layers"].append("userns")

if cfg["landlock"] or cfg["seccomp"]:
    import ctypes
    _libc = ctypes.CDLL(None, use_errno=True)
    _libc.syscall.restype = ctypes.c_long
    def _check(rc, what):
        if rc < 0:
            e = ctypes.get_errno()
            raise OSError(e, "%s: %s" % (what, os.strerror(e)))
        return rc
    _check(_libc.prctl(38, 1, 0, 0, 0), "no_new_privs")  # PR_SET_NO_NEW_PRIVS

if cfg["landlock"]:
    # Landlock: read (and execute) only the exposed trees, write only our directory.
    try:
        ll = cfg["landlock"]
        abi = _check(_libc.syscall(444, None, 0, 1), "landlock abi")  # CREATE_RULESET_VERSION
        handled = (1 << 13) - 1 | ((1 << 13) if abi >= 2 else 0) | ((1 << 14) if abi >= 3 else 0) \
            | ((1 << 15) if abi >= 5 else 0)
        READ = 1 | 4 | 8  # execute, read file, read dir
        attr = ctypes.create_string_buffer(24)
        size = 8
        ctypes.memmove(attr, bytes(ctypes.c_uint64(handled)), 8)
        if abi >= 4:  # no TCP bind/connect at all
            ctypes.memmove(ctypes.byref(attr, 8), bytes(ctypes.c_uint64(3)), 8)
            size = 16
        if abi >= 6:  # signals and abstract unix sockets stay inside the sandbox
            ctypes.memmove(ctypes.byref(attr, 16), bytes(ctypes.c_uint64(3)), 8)
            size = 24
        rfd = _check(_libc.syscall(444, attr, size, 0), "landlock_create_ruleset")
        def _allow(path, access):
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                return
            try:
                is_dir = os.path.isdir(path)
                if not is_dir:
                    access &= 1 | 2 | 4 | (1 << 14) | (1 << 15)  # rights that apply to files
                rule = bytes(ctypes.c_uint64(access & handled)) + bytes(ctypes.c_int32(fd))
                _check(_libc.syscall(445, rfd, 1, ctypes.c_char_p(rule), 0), "landlock_add_rule " + path)
            finally:
                os.close(fd)
        for p in ll["read"]:
            _allow(p, READ)
        for p in ll["write"]:
            _allow(p, handled)
        for p in ll["devices"]:
            _allow(p, READ | 2 | ((1 << 14) if abi >= 3 else 0))
        _check(_libc.syscall(446, rfd, 0), "landlock_restrict_self")
        os.close(rfd)
        info["layers"].append("landlock")
        info["landlock_abi"] = abi
    except OSError as exc:
        info["errors"].append("landlock: %s" % exc)

if cfg["seccomp"]:
    try:
        if os.getpid() != cfg["seccomp_pid"]:
            raise OSError(0, "filter made for pid %d, running as %d" % (cfg["seccomp_pid"], os.getpid()))
        import base64
        prog = base64.b64decode(cfg["seccomp"])
        buf = ctypes.create_string_buffer(prog, len(prog))
        class _Fprog(ctypes.Structure):
            _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
        fprog = _Fprog(len(prog) // 8, ctypes.cast(buf, ctypes.c_void_p))
        _check(_libc.prctl(22, 2, ctypes.byref(fprog), 0, 0), "seccomp")  # PR_SET_SECCOMP, FILTER
        info["layers"].append("seccomp")
    except OSError as exc:
        info["errors"].append("seccomp: %s" % exc)

for m in [m for m in sys.modules if m == "ctypes" or m.startswith("ctypes.")]:
    del sys.modules[m]
if cfg["guard"]:
    # No audit event guards these: take them away (re-importing posix is refused).
    def _refused(*args, **kwargs):
        raise PermissionError("sandbox: not allowed")
    import _posixsubprocess, posix, signal as _signal
    for _mod, _names in ((posix, ("mknod", "mkfifo", "pidfd_open")), (os, ("mknod", "mkfifo", "pidfd_open")),
                         (_signal, ("pidfd_send_signal",)), (_posixsubprocess, ("fork_exec",))):
        for _name in _names:
            if hasattr(_mod, _name):
                setattr(_mod, _name, _refused)
    _g = {"__builtins__": __builtins__}
    exec(cfg["guard_src"], _g)
    _g.pop("install")(os.getcwd())
    del _g, _signal, _refused, _mod, _names, _name
    info["layers"].append("audit-hook")
os.write(cfg["info_fd"], json.dumps(info).encode())
os.close(cfg["info_fd"])
_source = cfg["source"]
del cfg, info, resource, _limit, _fh

import types
_main = types.ModuleType("__main__")
_main.__file__ = "main.py"
_main.__builtins__ = __builtins__
sys.modules["__main__"] = _main
_code = compile(_source, "main.py", "exec")
del types, _source
exec(_code, _main.__dict__)
'''


# The audit hook (second layer). `install` binds every name the hook uses into closure
# cells: the hook reads no globals and no builtins, so a program that rebinds
# builtins.type, os.path or posix.* cannot change what the hook sees (tests check its
# bytecode has no LOAD_GLOBAL).
_GUARD = r'''
def install(root):
    import sys, posix, pathlib
    _audit = sys.addaudithook
    _str, _bytes, _int, _type, _tuple, _len, _reversed = str, bytes, int, type, tuple, len, reversed
    _PermErr, _OSError = PermissionError, OSError
    _getcwd, _readlink, _lstat, _stat = posix.getcwd, posix.readlink, posix.lstat, posix.stat
    _getpid, _getpgrp = posix.getpid, posix.getpgrp
    _path_types = (pathlib.PosixPath, pathlib.PurePosixPath)
    _path_str = pathlib.PurePath.__str__
    _WRITE_FLAGS = posix.O_WRONLY | posix.O_RDWR | posix.O_CREAT | posix.O_TRUNC | posix.O_APPEND
    _S_IFMT, _S_IFLNK, _S_IFDIR = 0o170000, 0o120000, 0o040000
    _root = root.rstrip("/")
    _root_slash = _root + "/"
    _write_ok = frozenset(["/dev/null", "/dev/stdout", "/dev/stderr", "/dev/zero"])
    _no_dirfd = frozenset([None, -1, -100])
    _socket_addr_events = frozenset(["socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg"])
    # ctypes may be imported (numpy does, and only dlopen()s the running process while
    # doing so) but every symbol lookup, foreign call and raw-address object is refused.
    _blocked_imports = frozenset(["_posixsubprocess", "_cffi_backend", "cffi", "posix", "_xxsubinterpreters",
                                  "_xxinterpchannels", "_interpreters", "_interpchannels"])
    _deny_always = frozenset([
        "os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.spawn", "os.system",
        "os.startfile", "subprocess.Popen", "pty.spawn",
        "ctypes.dlsym", "ctypes.call_function", "ctypes.cdata",
        "ctypes.dlsym/handle", "ctypes.set_errno", "ctypes.get_errno",
        "resource.setrlimit", "resource.prlimit",
        "sys.settrace", "sys.setprofile", "sys._current_frames",
        "gc.get_objects", "gc.get_referrers", "gc.get_referents",
        "cpython.PyInterpreterState_New",  # a second interpreter would not have this hook
    ])
    _one_path = {  # event -> positions of (path, dir_fd) pairs that must stay inside
        "os.remove": ((0, 1),), "os.rmdir": ((0, 1),), "os.mkdir": ((0, 2),),
        "os.chmod": ((0, 2),), "os.chown": ((0, 3),), "os.utime": ((0, 3),),
        "os.truncate": ((0, None),), "os.setxattr": ((0, None),),
        "os.removexattr": ((0, None),), "os.chflags": ((0, None),),
        "os.lchflags": ((0, None),), "os.symlink": ((1, 2),),
        "os.link": ((0, 2), (1, 3)), "os.rename": ((0, 2), (1, 3)),
        "shutil.rmtree": ((0, 1),), "shutil.chown": ((0, None),),
    }

    def deny(what):
        raise _PermErr("sandbox: " + what + " is not allowed")

    def as_text(p):
        t = _type(p)
        if t is _str:
            return p
        if t is _bytes:
            return p.decode("utf-8", "surrogateescape")
        if t in _path_types:
            return _path_str(p)
        return None

    def fd_path(fd):
        try:
            return _readlink("/proc/self/fd/" + _str(fd))
        except _OSError:
            return None

    def normalise(path):
        out = []
        for part in path.split("/"):
            if part == "" or part == ".":
                continue
            if part == "..":
                if out:
                    out.pop()
            else:
                out.append(part)
        return "/" + "/".join(out)

    def resolve(path, depth):
        # Absolute, walked component by component as the kernel does: a symlink is
        # followed before a later ".." applies, so "link/../x" is resolved where the
        # link leads, not textually.
        todo = [c for c in path.split("/") if c]
        todo.reverse()
        cur = "/"
        hops = 0
        while todo:
            name = todo.pop()
            if name == ".":
                continue
            if name == "..":
                cur = cur.rsplit("/", 1)[0] or "/"
                continue
            nxt = (cur if cur != "/" else "") + "/" + name
            try:
                st = _lstat(nxt)
            except _OSError:
                rest = [nxt] + [c for c in _reversed(todo)]
                return normalise("/".join(rest))
            if (st.st_mode & _S_IFMT) == _S_IFLNK:
                hops += 1
                if hops > 40:
                    return None
                target = _readlink(nxt)
                if target.startswith("/"):
                    cur = "/"
                parts = [c for c in target.split("/") if c]
                parts.reverse()
                todo.extend(parts)
                continue
            cur = nxt
        return cur

    def absolute(p, dir_fd):
        if _type(p) is _int:
            return fd_path(p)
        text = as_text(p)
        if text is None:
            return None
        if text.startswith("/"):
            return text
        if dir_fd in _no_dirfd:
            base = _getcwd()
        elif _type(dir_fd) is _int:
            base = fd_path(dir_fd)
        else:
            return None
        if base is None:
            return None
        return base + "/" + text

    def inside(p, dir_fd):
        a = absolute(p, dir_fd)
        if a is None:
            return False
        if normalise(a) in _write_ok:
            return True
        r = resolve(a, 0)
        return r is not None and (r == _root or r.startswith(_root_slash))

    def foreign_proc(a):
        if not a.startswith("/proc/"):
            return False
        first = a[6:].split("/", 1)[0]
        return first.isdigit() and first != _str(_getpid())

    def is_dir(a):
        try:
            return (_stat(a).st_mode & _S_IFMT) == _S_IFDIR
        except _OSError:
            return False

    def check_read(p, raw_open):
        a = absolute(p, None)
        if a is None:
            deny("opening a path of type " + _type(p).__name__)
        r = resolve(a, 0)
        a = normalise(a)
        if r is None or foreign_proc(a) or foreign_proc(r):
            deny("reading " + a)
        # The open event carries no dir_fd, so paths relative to a directory descriptor
        # cannot be checked: no descriptors for directories outside ours, then.
        if raw_open and not (r == _root or r.startswith(_root_slash)) and is_dir(r):
            deny("a descriptor for directory " + a)

    def symlink_target_ok(target):
        # Only links that stay below their own directory wherever they are moved to.
        text = as_text(target)
        return text is not None and not text.startswith("/") and ".." not in text.split("/")

    def hook(event, args):
        if event == "open":
            p, mode, flags = args
            if _type(p) is _int:
                return
            writing = (_type(flags) is _int and flags & _WRITE_FLAGS) or (
                _type(mode) is _str and ("w" in mode or "a" in mode or "x" in mode or "+" in mode))
            if writing:
                if not inside(p, None):
                    deny("writing " + _str(as_text(p)))
            check_read(p, mode is None)
            return
        if event == "os.symlink" and not symlink_target_ok(args[0]):
            deny("a symlink to " + _str(as_text(args[0])))
        if event in _one_path:
            for pos, dfd in _one_path[event]:
                d = None if dfd is None or dfd >= _len(args) else args[dfd]
                if not inside(args[pos], d):
                    deny(event + " on " + _str(as_text(args[pos])))
            return
        if event in _deny_always:
            deny(event)
        if event == "ctypes.dlopen":
            if args[0] is None:
                return
            deny("ctypes.dlopen")
        if event == "import":
            if args[0] in _blocked_imports:
                deny("importing " + _str(args[0]))
            return
        if event == "os.kill":
            pid = args[0]
            if _type(pid) is _int and (pid == 0 or pid == _getpid() or pid == -_getpgrp()):
                return
            deny("signalling another process")
        if event == "os.killpg":
            if _type(args[0]) is _int and args[0] == _getpgrp():
                return
            deny("signalling another process group")
        if event == "socket.__new__" or event in _socket_addr_events:
            deny("sockets")

    _audit(hook)
'''


# ---- what this machine offers --------------------------------------------------------------

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


def _interpreter_paths(python: str) -> list[str]:
    """Directories the sandboxed interpreter reads: its prefixes (the standard library and
    the environment's site-packages), nothing from PYTHONPATH or the repository."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
             os.path.dirname(os.path.dirname(os.path.realpath(python)))}
    return _outermost(p for p in paths if p and os.path.isdir(p))


_SYSTEM_PATHS = ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/etc/ld.so.cache", "/etc/localtime")


def _outermost(paths) -> list[str]:
    out: list[str] = []
    for p in sorted({os.path.normpath(p) for p in paths}):
        if not any(p == q or p.startswith(q.rstrip("/") + "/") for q in out):
            out.append(p)
    return out


def _ancestors(path: str) -> list[str]:
    """"/a/b/c" -> ["/a", "/a/b"]."""
    parts = path.strip("/").split("/")[:-1]
    return ["/" + "/".join(parts[:i]) for i in range(1, len(parts) + 1)]


def _minimal_env(home: str, extra: dict | None) -> dict:
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": home,
        "TMPDIR": home,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        # One thread per numeric library: each glibc arena and thread stack reserves
        # address space against RLIMIT_AS.
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "MALLOC_ARENA_MAX": "2",
    }
    if extra:
        env.update({str(k): str(v) for k, v in extra.items()})
    return env


# ---- one sandboxed interpreter ------------------------------------------------------------

class _Tail:
    """Keeps the first and last `keep // 2` bytes of a stream, however long it is."""

    def __init__(self, keep: int):
        self.half = keep // 2
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def add(self, data: bytes) -> None:
        self.total += len(data)
        room = self.half - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data:
            self.tail += data
            if len(self.tail) > self.half:
                del self.tail[:len(self.tail) - self.half]

    def text(self) -> str:
        data = bytes(self.head)
        if self.total > len(self.head) + len(self.tail):
            data += b"\n...[truncated]...\n"
        return (data + bytes(self.tail)).decode("utf-8", "replace")


class _Frames:
    """Reply frames from the runner: 4-byte header length, 8-byte body length, JSON header,
    body. Sizes are checked before anything is buffered."""

    def __init__(self, max_body: int):
        self.max_body = max_body
        self.buf = bytearray()
        self.frames: list[tuple[dict, bytes, float]] = []
        self.error: str | None = None

    def add(self, data: bytes, now: float) -> None:
        self.buf += data
        while len(self.buf) >= 12 and self.error is None:
            hlen, blen = struct.unpack(">IQ", self.buf[:12])
            if hlen > _HEADER_MAX:
                self.error = "protocol"
            elif blen > self.max_body:
                self.error = "output"
            if self.error or len(self.buf) < 12 + hlen + blen:
                return
            try:
                header = json.loads(bytes(self.buf[12:12 + hlen]))
                if not isinstance(header, dict):
                    raise ValueError
            except (ValueError, RecursionError):
                self.error = "protocol"
                return
            body = bytes(self.buf[12 + hlen:12 + hlen + blen])
            del self.buf[:12 + hlen + blen]
            self.frames.append((header, body, now))


def _sched(pid: int | None) -> tuple[float, float] | None:
    """(seconds on a CPU, seconds waiting for one) of a process's main thread."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/schedstat", "rb") as fh:
            on_cpu, waiting, _ = fh.read().split()
        return int(on_cpu) / 1e9, int(waiting) / 1e9
    except (OSError, ValueError):
        return None


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(p) for p in fh.read().split()]
    except FileNotFoundError:  # a kernel without CONFIG_PROC_CHILDREN: scan for the parent
        kids = []
        for name in os.listdir("/proc"):
            try:
                with open(f"/proc/{name}/stat", "rb") as fh:
                    if name.isdigit() and int(fh.read().rsplit(b")", 1)[1].split()[1]) == pid:
                        kids.append(int(name))
            except (OSError, ValueError, IndexError):
                pass
        return kids
    except (OSError, ValueError):
        return []


def _uid_pids(uid: int) -> list[int]:
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat(f"/proc/{name}").st_uid == uid:
                    pids.append(int(name))
            except OSError:
                pass
    return pids


def _rmtree(path: str) -> None:
    def retry(func, p, _exc):
        try:
            os.chmod(os.path.dirname(p), 0o700)
            os.chmod(p, 0o700)
        except OSError:
            pass
        try:
            func(p)
        except OSError:
            pass
    shutil.rmtree(path, onerror=retry)


_MEMORY_PATTERNS = re.compile(rb"^MemoryError|Cannot allocate memory|Fatal Python error: .*[Mm]emory", re.M)


class _Sandboxed:
    """One interpreter in the sandbox, and the grader's end of its pipes.

    `pump` moves bytes (stdin out; stdout, stderr, reply frames and the bootstrap report
    in) until a condition holds, a deadline passes or the process exits."""

    def __init__(self, source: str, *, mode: str, memory_mb: int, cpu_s: int, max_procs: int, max_file_mb: int,
                 disk_mb: int, max_open_files: int, max_output_bytes: int, env: dict | None, guard: bool,
                 python: str | None, workdir_base: str | None, replies: bool, keep_stdout: bool):
        self.mode = _resolve_mode(mode)
        self.max_output = max_output_bytes
        self.keep_stdout = keep_stdout
        self.stdout = bytearray()
        self.stdout_tail = _Tail(STDERR_KEEP)
        self.stderr = _Tail(STDERR_KEEP)
        self.frames = _Frames(max_output_bytes) if replies else None
        self.killed_for: str | None = None
        self.info_raw = bytearray()
        self.exited = False
        self.rc: int | None = None
        self.rusage = None
        self.notes: list[str] = []
        self.start = time.monotonic()
        python = python or sys.executable
        is_root = os.geteuid() == 0
        bwrap = self.mode == "bwrap"
        self.uid = random.SystemRandom().randint(*_UID_RANGE) if (is_root and bwrap) else None
        seccomp = self.mode in ("bwrap", "landlock")
        exposed = _outermost([*_interpreter_paths(python), *(p for p in _SYSTEM_PATHS if os.path.exists(p))])
        self.workdir = None if bwrap else tempfile.mkdtemp(prefix="geopd-sbx-", dir=workdir_base)
        cwd = SANDBOX_DIR if bwrap else self.workdir
        nproc = None
        if self.uid is not None:
            nproc = max_procs  # threads of a uid of its own
        elif not seccomp:  # no filter against fork: RLIMIT_NPROC is the only bound left
            nproc = max_procs + (len(_uid_pids(os.getuid())) if not is_root else 0)
        self._fds: list[int] = []
        self.proc = None
        try:
            info_r, info_w = self._pipe()
            reply_r, reply_w = self._pipe() if replies else (-1, -1)
            cfg_r, cfg_w = self._pipe()
            cfg = {
                "uid": self.uid, "userns": bwrap and not is_root, "cpu_s": int(cpu_s),
                "memory_bytes": int(memory_mb) << 20, "file_bytes": int(max_file_mb) << 20,
                "nofile": int(max_open_files), "nproc": nproc, "guard": bool(guard), "guard_src": _GUARD,
                "info_fd": info_w, "reply_fd": reply_w, "source": source,
                # Without namespaces the directory is on the host's disk, which nothing
                # here can bound: there the program may not write at all.
                "landlock": {"read": exposed + ([] if bwrap else [cwd]), "write": [cwd] if bwrap else [],
                             "devices": ["/dev/null", "/dev/zero", "/dev/full", "/dev/urandom", "/dev/random"]}
                if seccomp and _landlock_abi() else None,
                "seccomp": None, "seccomp_pid": None,
            }
            boot = [python, "-I", "-B", "-X", "utf8", "-c", _BOOT, str(cfg_r)]
            if bwrap:
                argv = [shutil.which("bwrap"), *_bwrap_ns_args(is_root)]
                # Parents bubblewrap would make 0700 (unreadable to the run's uid): 0755.
                parents = sorted({a for p in exposed for a in _ancestors(p)})
                for d in parents:
                    argv += ["--perms", "0755", "--dir", d]
                for p in exposed:
                    if os.path.islink(p):
                        argv += ["--symlink", os.readlink(p), p]
                    else:
                        argv += ["--ro-bind", p, p]
                argv += ["--proc", "/proc", "--dev", "/dev", "--perms", "0700" if self.uid is None else "0777",
                         "--size", str(int(disk_mb) << 20), "--tmpfs", SANDBOX_DIR,
                         "--remount-ro", "/dev", "--remount-ro", "/", "--chdir", SANDBOX_DIR, "--", *boot]
            else:
                argv = boot
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                cwd="/" if bwrap else cwd, env=_minimal_env(cwd, env), start_new_session=True,
                pass_fds=[fd for fd in (info_w, reply_w, cfg_r) if fd >= 0], close_fds=True)
            if seccomp:
                # The filter names the pid the program has: 2 in bubblewrap's pid namespace,
                # otherwise the one just spawned (the bootstrap reads cfg only now).
                pid = _BWRAP_PID if bwrap else self.proc.pid
                cfg["seccomp"], cfg["seccomp_pid"] = base64.b64encode(seccomp_program(pid)).decode(), pid
            # The child holds its own copies: close ours so EOF means the child closed them.
            for fd in (info_w, reply_w, cfg_r):
                if fd >= 0:
                    self._close(fd)
            self.info_r, self.reply_r = info_r, reply_r
            self._host_pid = None if bwrap else self.proc.pid
            self._register()
            self._queue(cfg_w, json.dumps(cfg).encode(), close=True)
        except BaseException:
            self.close()
            raise

    def _pipe(self) -> tuple[int, int]:
        r, w = os.pipe()
        self._fds += [r, w]
        return r, w

    def _close(self, fd: int) -> None:
        if fd in self._fds:
            self._fds.remove(fd)
            try:
                os.close(fd)
            except OSError:
                pass

    def _register(self) -> None:
        self.sel = selectors.DefaultSelector()
        self.open_streams = set()
        for fd, name in ((self.proc.stdout.fileno(), "out"), (self.proc.stderr.fileno(), "err"),
                         (self.info_r, "info"), (self.reply_r, "reply")):
            if fd >= 0:
                os.set_blocking(fd, False)
                self.sel.register(fd, selectors.EVENT_READ, name)
                self.open_streams.add(name)
        self.stdin_fd = self.proc.stdin.fileno()
        self.out: dict[int, list] = {}
        self.writing: set[int] = set()
        try:
            self.pidfd = os.pidfd_open(self.proc.pid)
            self.sel.register(self.pidfd, selectors.EVENT_READ, "exit")
        except (AttributeError, OSError):
            self.pidfd = -1

    @property
    def host_pid(self) -> int | None:
        """The sandboxed interpreter's pid as the grader sees it (bubblewrap's init's child)."""
        if self._host_pid is None and not self.exited:
            for init in _children(self.proc.pid):
                kids = _children(init)
                if kids:
                    self._host_pid = kids[0]
        return self._host_pid

    # -- writing: the program's stdin and the bootstrap's configuration
    def _queue(self, fd: int, data: bytes, close: bool = False) -> None:
        q = self.out.setdefault(fd, [bytearray(), False])
        q[0] += data
        q[1] = q[1] or close
        if fd not in self.writing:
            os.set_blocking(fd, False)
            self.sel.register(fd, selectors.EVENT_WRITE, "in")
            self.writing.add(fd)

    def _done_writing(self, fd: int) -> None:
        self.sel.unregister(fd)
        self.writing.discard(fd)
        if self.out[fd][1]:
            del self.out[fd]
            if fd == self.stdin_fd:
                try:
                    self.proc.stdin.close()
                except OSError:
                    pass
            else:
                self._close(fd)

    def send(self, data: bytes, close: bool = False) -> None:
        if self.exited or self.proc.stdin.closed:
            return
        self._queue(self.stdin_fd, data, close)

    @property
    def sent(self) -> bool:
        return self.stdin_fd not in self.writing

    # -- the loop
    def pump(self, until, deadline: float) -> str:
        """Run I/O until `until()` is true ("done"), the process exits ("exit"), output
        passes its bound ("output"/"protocol") or `deadline` passes ("deadline")."""
        while True:
            if self.killed_for:
                return self.killed_for
            if until():
                return "done"
            if self.exited:
                return "exit"
            now = time.monotonic()
            if now >= deadline:
                return "deadline"
            wait = deadline - now
            if self.pidfd < 0:
                wait = min(wait, 0.02)
                if os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                    self._on_exit()
                    continue
            for key, _ in self.sel.select(timeout=wait):
                if key.fd in self.sel.get_map():  # an earlier event of the batch may have closed it
                    self._event(key.data, key.fd)

    def _event(self, name: str, fd: int) -> None:
        if name == "in":
            buf = self.out[fd][0]
            try:
                del buf[:os.write(fd, buf[:1 << 16])]
            except BlockingIOError:
                return
            except OSError:  # the reader closed its end or exited
                buf.clear()
            if not buf:
                self._done_writing(fd)
            return
        if name == "exit":
            self._on_exit()
            return
        try:
            block = os.read(fd, 1 << 16)
        except BlockingIOError:
            return
        except OSError:
            block = b""
        if not block:
            self.sel.unregister(fd)
            self.open_streams.discard(name)
            return
        if name == "out":
            if self.keep_stdout:
                self.stdout += block
                if len(self.stdout) > self.max_output:
                    self.kill("output")
            else:
                self.stdout_tail.add(block)
        elif name == "err":
            self.stderr.add(block)
        elif name == "info":
            if len(self.info_raw) < _HEADER_MAX:
                self.info_raw += block
        elif name == "reply":
            self.frames.add(block, time.monotonic())
            if self.frames.error:
                self.kill(self.frames.error)

    def _on_exit(self) -> None:
        if self.exited:
            return
        if self.pidfd >= 0:
            self.sel.unregister(self.pidfd)
            os.close(self.pidfd)
            self.pidfd = -1
        self._reap()
        # Whatever the program wrote before it ended is still in the pipes: drain it
        # (bounded: the writers are gone, or are killed with the namespace).
        drain_until = time.monotonic() + 1.0
        while self.open_streams and time.monotonic() < drain_until:
            for key, _ in self.sel.select(timeout=max(0.0, drain_until - time.monotonic())):
                if key.data not in ("in", "exit") and key.fd in self.sel.get_map():
                    self._event(key.data, key.fd)

    def _reap(self) -> None:
        """Kill the whole sandbox, then reap its leader (in that order: until it is reaped
        its pid, the group id, cannot be reused by an unrelated process)."""
        for target in (self._host_pid,):
            if target:
                try:
                    os.kill(target, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            os.kill(self.proc.pid, signal.SIGKILL)  # not Popen.kill(): it would poll, i.e. reap, first
        except ProcessLookupError:
            pass
        _, status, self.rusage = os.wait4(self.proc.pid, 0)
        self.rc = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        self.proc.returncode = self.rc
        self.exited = True

    def kill(self, why: str) -> None:
        if self.killed_for is None:
            self.killed_for = why
        if not self.exited:
            self.host_pid  # resolve before the namespace goes
            self._on_exit()

    @property
    def info(self) -> dict | None:
        try:
            value = json.loads(bytes(self.info_raw).decode() or "null")
        except (ValueError, RecursionError):
            return None
        return value if isinstance(value, dict) else None

    @property
    def layers(self) -> tuple[str, ...]:
        info = self.info or {}
        layers = list(info.get("layers", []))
        if self.mode == "bwrap":
            layers.insert(0, "bwrap")
        return tuple(dict.fromkeys(layers))

    def close(self) -> None:
        proc = getattr(self, "proc", None)
        if proc is not None and not self.exited:
            self._on_exit()
        if hasattr(self, "sel"):
            self.sel.close()
        if proc is not None:
            for f in (proc.stdin, proc.stdout, proc.stderr):
                try:
                    f.close()
                except OSError:
                    pass
        for fd in list(self._fds):
            self._close(fd)
        if self.workdir:
            _rmtree(self.workdir)
            self.workdir = None

    def status(self) -> str:
        """The run's end as one word (see RunResult)."""
        if self.killed_for in ("timeout", "deadline"):
            return "timeout"
        if self.killed_for in ("output", "protocol"):
            return "output_limit"
        if self.info is None:
            return "sandbox_error"
        rc = self.rc
        if self.mode == "bwrap" and rc is not None and rc > 128:
            rc = -(rc - 128)  # bubblewrap exits 128 + n when its child dies of signal n
        if rc == 0:
            return "ok"
        if rc == -signal.SIGXCPU:
            return "timeout"
        if _MEMORY_PATTERNS.search(self.stderr.text()[-4096:].encode()):
            return "memory"
        if rc is not None and rc < 0:
            return "killed"
        return "runtime_error"


# ---- one program, one input ------------------------------------------------------------------

def _limits(timeout_s: float, cpu_s, memory_mb, max_procs, max_file_mb, disk_mb, max_open_files,
            max_output_bytes, env, mode, guard, python, workdir_base) -> dict:
    return dict(mode=mode, memory_mb=memory_mb,
                cpu_s=int(cpu_s if cpu_s is not None else math.ceil(timeout_s) + 1), max_procs=max_procs,
                max_file_mb=max_file_mb, disk_mb=disk_mb, max_open_files=max_open_files,
                max_output_bytes=max_output_bytes, env=env, guard=guard, python=python, workdir_base=workdir_base)


def run_program(
    source: str,
    stdin: str = "",
    *,
    timeout_s: float = 6.0,
    memory_mb: int = 1024,
    cpu_s: int | None = None,
    max_procs: int = 32,
    max_file_mb: int = 16,
    disk_mb: int = 64,
    max_output_bytes: int = 16 * 1024 * 1024,
    max_open_files: int = 64,
    env: dict | None = None,
    mode: str = "auto",
    guard: bool = True,
    python: str | None = None,
    workdir_base: str | None = None,
) -> RunResult:
    """Run `source` as a Python program with `stdin`, isolated as the module doc describes.

    timeout_s is wall-clock from the start; cpu_s (default: timeout rounded up, plus 1) is
    the CPU-time rlimit; memory_mb bounds the address space (one process: all of it);
    disk_mb the program's directory; max_procs threads (or processes where nothing
    stops forking). `guard=False` leaves out the audit hook so tests can check what the
    kernel layers contain on their own."""
    box = _Sandboxed(source, replies=False, keep_stdout=True, **_limits(
        timeout_s, cpu_s, memory_mb, max_procs, max_file_mb, disk_mb, max_open_files, max_output_bytes, env, mode,
        guard, python, workdir_base))
    try:
        box.send(stdin.encode("utf-8"), close=True)
        if box.pump(lambda: False, box.start + timeout_s) == "deadline":
            box.kill("timeout")
        box.close()
    finally:
        box.close()
    wall = time.monotonic() - box.start
    cpu = (box.rusage.ru_utime + box.rusage.ru_stime) if box.rusage is not None else 0.0
    status = box.status()
    notes = list((box.info or {}).get("errors", []))
    if box.info is None:
        notes.append("the sandbox bootstrap did not report (it failed before the program ran)")
    return RunResult(status, box.rc, bytes(box.stdout[:max_output_bytes]).decode("utf-8", "replace"),
                     box.stderr.text(), wall, cpu, box.layers, notes)


def run_batch(jobs, *, workers: int = 2, **kwargs) -> list[RunResult]:
    """Run many programs, `workers` at a time; results in the order of `jobs`.

    Each job is a source string, a (source, stdin) pair, or a dict with "source", optional
    "stdin" and per-job keyword overrides of `run_program`."""
    from concurrent.futures import ThreadPoolExecutor

    def one(job):
        if isinstance(job, str):
            return run_program(job, **kwargs)
        if isinstance(job, tuple):
            return run_program(job[0], job[1], **kwargs)
        job = dict(job)
        return run_program(job.pop("source"), job.pop("stdin", ""), **{**kwargs, **job})

    jobs = list(jobs)
    if workers <= 1 or len(jobs) <= 1:
        return [one(j) for j in jobs]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, jobs))


# ---- one program, many requests (all tests of a program in one process) ------------------------

# The runner side of the request protocol, for runner sources to start with. Requests come
# on a private descriptor (stdin is /dev/null for the program), replies go out on another;
# both frames are: 4-byte header length, 8-byte body length, JSON header, body. Replies
# carry the request's sequence number: a late reply to an earlier request is refused.
RUNNER_LIB = r'''
import json as _json, os as _os, struct as _struct
_REQ = _os.dup(0)
_os.dup2(_os.open("/dev/null", _os.O_RDONLY), 0)
_REPLY = int(__import__("sys").argv.pop())
_read, _write, _pack, _unpack, _dumps, _loads = _os.read, _os.write, _struct.pack, _struct.unpack, _json.dumps, _json.loads

def _recv_exact(n):
    parts = []
    while n:
        block = _read(_REQ, min(n, 1 << 20))
        if not block:
            return None
        parts.append(block)
        n -= len(block)
    return b"".join(parts)

_seq = [None]

def recv():
    head = _recv_exact(12)
    if head is None:
        return None
    hlen, blen = _unpack(">IQ", head)
    header = _loads(_recv_exact(hlen))
    body = _recv_exact(blen) if blen else b""
    _seq[0] = header.get("seq")
    return header, body

def send(header, body=b""):
    h = _dumps(dict(header, seq=_seq[0])).encode()
    data = memoryview(_pack(">IQ", len(h), len(body)) + h + body)
    while data:
        data = data[_write(_REPLY, data):]
'''


def frame(header: dict, body: bytes = b"") -> bytes:
    h = json.dumps(header).encode()
    return struct.pack(">IQ", len(h), len(body)) + h + body


@dataclass
class Reply:
    """One request's outcome. status: ok | timeout | exit (the process ended) |
    output_limit | protocol. elapsed_s: seconds from the request's delivery to the
    runner's "done", measured by the grader, less the time the process spent waiting for a
    CPU (so that a loaded machine does not turn correct programs into timeouts)."""

    status: str
    header: dict | None = None
    body: bytes = b""
    elapsed_s: float | None = None
    wall_s: float | None = None


class Session:
    """A sandboxed runner that answers requests one at a time (see RUNNER_LIB).

    `runner` is Python source that starts with RUNNER_LIB (the reply descriptor filled in
    by `Session`) and serves requests with recv()/send(); it sends {"ready": true} first.
    Per request the runner sends a {"done": ...} frame as soon as the timed work ends,
    then the result frame; only the first is timed, the second has `result_grace_s`."""

    HARD_FACTOR = 4.0  # a request never runs longer than this x its limit, however loaded

    def __init__(self, runner: str, *, timeout_s: float = 6.0, n_requests: int = 1, startup_s: float = 60.0,
                 memory_mb: int = 1024, max_procs: int = 32, max_file_mb: int = 16, disk_mb: int = 64,
                 max_output_bytes: int = 16 * 1024 * 1024, max_open_files: int = 64, env: dict | None = None,
                 mode: str = "auto", guard: bool = True, python: str | None = None,
                 workdir_base: str | None = None):
        cpu = int(math.ceil((timeout_s + 1) * max(1, n_requests) * self.HARD_FACTOR)) + 5
        self.box = _Sandboxed(runner, replies=True, keep_stdout=False, **_limits(
            timeout_s, cpu, memory_mb, max_procs, max_file_mb, disk_mb, max_open_files, max_output_bytes, env,
            mode, guard, python, workdir_base))
        self.ready = False
        self.seq = 0
        ev = self.box.pump(lambda: bool(self.box.frames.frames), time.monotonic() + startup_s)
        if ev == "done":
            header, _, _ = self.box.frames.frames.pop(0)
            self.ready = header.get("ready") is True
        if not self.ready:
            self.box.kill("startup" if ev == "deadline" else "protocol")

    @property
    def isolation(self) -> tuple[str, ...]:
        return self.box.layers

    @property
    def stderr(self) -> str:
        return self.box.stderr.text()

    @property
    def stdout_tail(self) -> str:
        return self.box.stdout_tail.text()

    def _next_frame(self, deadline_fn) -> tuple[str, tuple | None]:
        frames = self.box.frames.frames
        while True:
            ev = self.box.pump(lambda: bool(frames), deadline_fn())
            if ev == "done":
                return "ok", frames.pop(0)
            if ev != "deadline":
                return ev, None
            if time.monotonic() >= deadline_fn():
                return "deadline", None

    def request(self, header: dict, body: bytes = b"", *, timeout_s: float = 6.0,
                result_grace_s: float | None = None) -> Reply:
        box = self.box
        if not self.ready or box.exited:
            return Reply("exit")
        if box.frames.frames:  # replies nobody asked for yet: the program forged them
            box.kill("protocol")
            return Reply("protocol")
        self.seq += 1
        seq = self.seq
        box.send(frame(dict(header, seq=seq), body))
        if box.pump(lambda: box.sent, time.monotonic() + max(30.0, timeout_s * self.HARD_FACTOR)) != "done":
            return self._failed(None, None)
        t0 = time.monotonic()
        pid = box.host_pid
        s0 = _sched(pid)
        hard = t0 + timeout_s * self.HARD_FACTOR + 1.0

        def waited() -> float:
            s = _sched(pid)
            return (s[1] - s0[1]) if (s and s0) else 0.0

        def deadline() -> float:
            # Extended by the time the program sat in the run queue, up to the hard cap.
            return min(hard, t0 + timeout_s + waited() + 0.05)

        ev, got = self._next_frame(deadline)
        t_done = time.monotonic()
        elapsed = max(0.0, (t_done - t0) - waited())
        if ev == "deadline":
            box.kill("timeout")
            return Reply("timeout", elapsed_s=max(elapsed, timeout_s), wall_s=t_done - t0)
        if ev != "ok":
            return self._failed(elapsed, t_done - t0)
        done_header, _, t_frame = got
        if not done_header.get("done") or done_header.get("seq") != seq:
            box.kill("protocol")
            return Reply("protocol", done_header, elapsed_s=elapsed, wall_s=t_done - t0)
        grace = timeout_s if result_grace_s is None else result_grace_s
        ev, got = self._next_frame(lambda: t_done + grace)
        if ev == "deadline":
            box.kill("timeout")
            return Reply("timeout", done_header, elapsed_s=elapsed, wall_s=t_done - t0)
        if ev != "ok":
            return self._failed(elapsed, t_done - t0)
        header, body_bytes, _ = got
        if header.get("seq") != seq:  # a late reply to an earlier request
            box.kill("protocol")
            return Reply("protocol", header, elapsed_s=elapsed, wall_s=t_done - t0)
        return Reply("ok", header, body_bytes, elapsed_s=elapsed, wall_s=t_done - t0)

    def _failed(self, elapsed, wall) -> Reply:
        why = self.box.killed_for
        status = {"output": "output_limit", "protocol": "protocol", "timeout": "timeout"}.get(why, "exit")
        return Reply(status, elapsed_s=elapsed, wall_s=wall)

    def end_status(self) -> str:
        """How the process ended (RunResult.status words), once it has."""
        return self.box.status()

    def close(self) -> None:
        self.box.close()  # kills what still runs: nothing of a run outlives its session

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
