# geopd sandbox audit hook: exec'd by the bootstrap, then install(<program dir>) (geopd.sandbox.programs).
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
