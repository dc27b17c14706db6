# geopd sandbox bootstrap: run as `python -I -B -X utf8 -c <this file's text> <cfg fd>` (geopd.sandbox.process).
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
