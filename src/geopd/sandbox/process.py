"""One sandboxed interpreter and the grader's end of its pipes (`_Sandboxed`).

The interpreter starts with the bootstrap (guest/boot.py), which sets the rlimits, drops to the
run's uid, applies Landlock and the seccomp filter and installs the audit hook before any
program code runs; under bubblewrap it runs in namespaces of its own with only the
interpreter's directories and the OS libraries mounted. Every byte in or out (stdin, stdout,
stderr, reply frames, the bootstrap's report) moves through one selector loop with bounds.
"""
from __future__ import annotations

import base64
import json
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

from geopd.sandbox.machine import _BWRAP_PID, _bwrap_ns_args, _landlock_abi, _resolve_mode, seccomp_program
from geopd.sandbox.programs import BOOT, GUARD

STDERR_KEEP = 16 * 1024  # bytes of stderr kept, as head and tail halves
SANDBOX_DIR = "/sandbox"  # the program's directory inside bubblewrap
_UID_RANGE = (1 << 24, (1 << 31) - 2)  # above any uid a distro or a subuid range hands out
_HEADER_MAX = 1 << 20


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
                "nofile": int(max_open_files), "nproc": nproc, "guard": bool(guard), "guard_src": GUARD,
                "info_fd": info_w, "reply_fd": reply_w, "source": source,
                # Without namespaces the directory is on the host's disk, which nothing
                # here can bound: there the program may not write at all.
                "landlock": {"read": exposed + ([] if bwrap else [cwd]), "write": [cwd] if bwrap else [],
                             "devices": ["/dev/null", "/dev/zero", "/dev/full", "/dev/urandom", "/dev/random"]}
                if seccomp and _landlock_abi() else None,
                "seccomp": None, "seccomp_pid": None,
            }
            boot = [python, "-I", "-B", "-X", "utf8", "-c", BOOT, str(cfg_r)]
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


def _limits(timeout_s: float, cpu_s, memory_mb, max_procs, max_file_mb, disk_mb, max_open_files,
            max_output_bytes, env, mode, guard, python, workdir_base) -> dict:
    return dict(mode=mode, memory_mb=memory_mb,
                cpu_s=int(cpu_s if cpu_s is not None else math.ceil(timeout_s) + 1), max_procs=max_procs,
                max_file_mb=max_file_mb, disk_mb=disk_mb, max_open_files=max_open_files,
                max_output_bytes=max_output_bytes, env=env, guard=guard, python=python, workdir_base=workdir_base)
