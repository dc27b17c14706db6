"""The programs that run inside the sandbox, kept as files in guest/ and read as package data.

boot.py        the bootstrap: runs first in every sandboxed interpreter (`python -c`), sets
               the rlimits and the uid, applies Landlock and seccomp, installs the audit hook,
               reports the layers it got on a descriptor, then runs the program as __main__;
guard.py       the audit hook (second layer): `install(root)` binds every name the hook uses
               into closure cells, so the hook reads no globals and no builtins and a program
               that rebinds builtins.type, os.path or posix.* cannot change what it sees (tests
               check its bytecode has no LOAD_GLOBAL);
runner_lib.py  the runner side of the request protocol (geopd.sandbox.session), which runner
               sources start with.
They use the standard library only and are never imported: each is text handed to a sandboxed
interpreter. Their first line is a comment, so that line numbers in a runner's tracebacks are
those of the text the sandbox runs.
"""
from __future__ import annotations

from importlib import resources


def _read(name: str) -> str:
    return resources.files("geopd.sandbox").joinpath("guest", name).read_text(encoding="utf-8")


BOOT = _read("boot.py")
GUARD = _read("guard.py")
RUNNER_LIB = _read("runner_lib.py")
