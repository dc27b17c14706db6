"""Attacks on the code sandbox and graders, as a model-written program would make them,
each returning whether containment held. tests/test_sandbox.py runs the battery in every
mode as root (in process) and as an unprivileged user (this file as a script, under a
dropped uid): `python tests/sandbox_battery.py MODE` prints {check: [held, detail]} as JSON.

Classes: escape (files, processes, signals, sockets, secrets, expected outputs),
resource (time, total memory, processes, disk, output), grader-crash (hostile output as
a verdict) and parity (correct and slow-but-correct programs still pass).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from geopd.sandbox import run_program
from geopd.grading.code import grade_tests


def _outside() -> Path:
    """A directory outside the sandbox that the sandbox's user could reach on its own."""
    d = Path(tempfile.mkdtemp(prefix="geopd-outside-"))
    os.chmod(d, 0o777)
    (d / "keep.txt").write_text("precious")
    os.chmod(d / "keep.txt", 0o666)
    (d / "sub").mkdir()
    os.chmod(d / "sub", 0o777)
    return d


def _attempts(lines: list[str]) -> str:
    """A program that runs each attempt and prints 'allowed' or 'refused' for it."""
    body = "\n".join(f"def a{i}():\n" + "\n".join("    " + x for x in line.split("\n")) for i, line in enumerate(lines))
    return (body + "\nfor f in [" + ", ".join(f"a{i}" for i in range(len(lines))) + "]:\n"
            "    try:\n        f()\n        print('allowed', flush=True)\n"
            "    except BaseException as exc:\n        print('refused', type(exc).__name__, flush=True)\n")


def battery(mode: str, guard: bool = True) -> dict[str, tuple[bool, str]]:
    out: dict[str, tuple[bool, str]] = {}
    outside = _outside()
    secret = f"s3cret-{uuid.uuid4().hex}"
    os.environ["GEOPD_FAKE_SECRET"] = secret
    decoy = subprocess.Popen(["sleep", "60"], start_new_session=True)
    unix_path = outside / "sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(unix_path))
    os.chmod(unix_path, 0o777)
    listener.listen()
    listener.setblocking(False)
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen()
    tcp.setblocking(False)
    kw = dict(mode=mode, guard=guard)
    try:
        keep = outside / "keep.txt"
        # -- escape: files
        attacks = [
            f"open({str(outside / 'new.txt')!r}, 'w').write('x')",
            f"open({str(keep)!r}, 'w').write('pwned')",
            f"import os\nos.remove({str(keep)!r})",
            f"import os\nos.rename({str(keep)!r}, 'stolen')",
            f"import os\nos.symlink({str(outside / 'sub')!r}, 'l')\nopen('l/../keep.txt', 'w').write('pwned')",
            "import _xxsubinterpreters as i\n"
            f"i.run_string(i.create(), {'open(%r, chr(119)).write(chr(112))' % str(outside / 'sub' / 'x')!r})",
            f"open('/tmp/geopd-probe-{uuid.uuid4().hex}', 'w').write('x')",
        ]
        r = run_program(_attempts(attacks), **kw)
        held = r.stdout.count("refused") == len(attacks) and keep.read_text() == "precious" \
            and sorted(p.name for p in outside.iterdir()) == ["keep.txt", "sock", "sub"] \
            and not list((outside / "sub").iterdir())
        out["escape/files"] = (held, r.stdout + r.stderr[-500:])
        # -- escape: secrets (environment, other processes, files of the same user)
        os.chmod(keep, 0o600)
        src = _attempts([
            "import os\nv = os.environ.get('GEOPD_FAKE_SECRET')\nassert v is None, v\nraise PermissionError",
            "print(open('/proc/%d/environ' % os.getppid(), 'rb').read())",
            f"print(open('/proc/{os.getpid()}/environ', 'rb').read())",
            f"print(open('/proc/{os.getpid()}/cmdline', 'rb').read())",
            f"print(open({str(keep)!r}).read())",
        ]).replace("def a0", "import os\ndef a0", 1)
        r = run_program(src, **kw)
        out["escape/secrets"] = (r.stdout.count("refused") == 5 and secret not in r.stdout + r.stderr
                                 and "precious" not in r.stdout, r.stdout[-800:] + r.stderr[-300:])
        os.chmod(keep, 0o666)
        # -- escape: processes and signals
        src = _attempts([
            f"import os, signal\nos.kill({decoy.pid}, signal.SIGKILL)",
            f"import os, signal\nos.kill({os.getpid()}, signal.SIGKILL)",
            "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)",
            f"import os, signal\nos.killpg({decoy.pid}, signal.SIGKILL)",
            f"import os, signal\nsignal.pidfd_send_signal(os.pidfd_open({decoy.pid}), signal.SIGKILL)",
            "import os\nos.kill(-1, 9)",
            "import os\nif os.fork() == 0:\n    os.setsid()\n    import time\n    time.sleep(60)",
            "import subprocess\nsubprocess.Popen(['sleep', '60'], start_new_session=True)",
        ])
        r = run_program(src, **kw)
        time.sleep(0.1)
        out["escape/signals-and-processes"] = (
            r.stdout.count("refused") == 8 and decoy.poll() is None, r.stdout + r.stderr[-300:])
        # -- escape: sockets (TCP to the host, path-based unix sockets)
        src = _attempts([
            f"import socket\ns = socket.socket(); s.settimeout(1); s.connect(('127.0.0.1', {tcp.getsockname()[1]}))",
            f"import socket\ns = socket.socket(socket.AF_UNIX); s.connect({str(unix_path)!r})",
            "import socket\nsocket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('127.0.0.1', 9))",
        ])
        r = run_program(src, **kw)
        reached = []
        for s in (listener, tcp):
            try:
                s.accept()
                reached.append(s)
            except BlockingIOError:
                pass
        out["escape/sockets"] = (r.stdout.count("refused") == 3 and not reached, r.stdout + r.stderr[-300:])
        # -- escape: the expected outputs (only in the grader's memory and its test file)
        token = uuid.uuid4().hex
        test_file = outside / "tests.jsonl"
        test_file.write_text(json.dumps({"input": "", "output": token}))
        os.chmod(test_file, 0o644)
        thief = ("import os, re\nfound = ''\n"
                 f"for path in [{str(test_file)!r}] + ['/proc/%s/%s' % (p, f) for p in os.listdir('/proc') "
                 "if p.isdigit() for f in ('cmdline', 'environ')]:\n"
                 "    try:\n        m = re.search('[0-9a-f]{32}', open(path, errors='replace').read())\n"
                 "        found = found or (m.group() if m else '')\n"
                 "    except Exception:\n        pass\nprint(found)")
        g = grade_tests(thief, [{"input": "", "output": token}], **kw)
        out["escape/expected-outputs"] = (not g["results"][0]["passed"], str(g["results"][0]))
        test_file.unlink()
        # -- resource: time, total memory, processes, disk, output
        g = grade_tests("while True:\n    pass", [{"input": "", "output": "1"}], timeout_s=1, **kw)
        out["resource/time"] = (g["results"][0]["verdict"] == "timeout", str(g["results"][0]))
        mem = ("import threading\nheld = []\ndef grab():\n    try:\n        while True:\n"
               "            held.append(bytearray(32 << 20))\n    except MemoryError:\n        pass\n"
               "ts = [threading.Thread(target=grab) for _ in range(4)]\n[t.start() for t in ts]\n"
               "[t.join() for t in ts]\nprint(len(held) * 32)")
        r = run_program(mem, memory_mb=512, timeout_s=20, **kw)
        total = int(r.stdout.strip() or 10 ** 9) if r.status == "ok" else 10 ** 9
        out["resource/total-memory"] = (total < 512, f"{r.status}: {total} MB held by 4 threads under 512 MB")
        r = run_program("n = 0\ntry:\n    for i in range(20):\n        open('f%d' % i, 'wb').write(b'x' * (8 << 20))\n"
                        "        n += 8\nfinally:\n    print(n)", disk_mb=32, max_file_mb=16, **kw)
        written = int(r.stdout.strip() or 10 ** 9)
        out["resource/disk"] = (written <= 32, f"{written} MB written under 32 MB: {r.stderr[-200:]}")
        r = run_program("import sys\nwhile True:\n    sys.stderr.write('e' * 65536)", timeout_s=1.5, **kw)
        out["resource/stderr"] = (r.status == "timeout" and len(r.stderr) <= 17 * 1024, f"{len(r.stderr)} bytes kept")
        g = grade_tests("print('x' * (80 << 20))", [{"input": "", "output": "x"}], **kw)
        out["resource/output"] = (g["results"][0]["verdict"] == "output_limit", str(g["results"][0]))
        # -- grader-crash: hostile output is a verdict
        verdicts = []
        for code in ("print('sNaN')", "print('[' * 100000)", "print(10 ** 60000)", "print('1 ' * 10_000_000)"):
            verdicts.append(grade_tests(code, [{"input": "", "output": "1"}], **kw)["results"][0]["verdict"])
        verdicts.append(grade_tests("class Solution:\n    def f(self, a):\n        x = 1\n        for _ in range(10**5):\n"
                                    "            x = [x]\n        return x", [{"input": "1", "output": "1"}],
                                    fn_name="f", **kw)["results"][0]["verdict"])  # input "1": one argument
        out["grader-crash"] = (verdicts == ["runtime_error", "wrong_answer", "runtime_error", "wrong_answer",
                                            "wrong_answer"], str(verdicts))
        # -- parity: correct programs pass, slow-but-correct ones too, with per-test limits
        tests = [{"input": f"{i} {i}\n", "output": f"{2 * i}\n"} for i in range(5)]
        g = grade_tests("a, b = map(int, input().split())\nprint(a + b)", tests, **kw)
        out["parity/correct"] = (all(r["passed"] for r in g["results"]) and len(g["results"]) == 5, str(g["results"]))
        slow = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.6:\n    pass\n" \
               "a, b = map(int, input().split())\nprint(a + b)"
        g = grade_tests(slow, tests[:3], timeout_s=1.5, **kw)
        out["parity/slow-but-correct"] = (all(r["passed"] for r in g["results"]) and len(g["results"]) == 3,
                                          str(g["results"]))
        g = grade_tests("class Solution:\n    def f(self, a, b):\n        return [a + b]", [
            {"input": "1\n2", "output": "[3]"}], fn_name="f", **kw)
        out["parity/call-based"] = (g["results"][0]["passed"], str(g["results"]))
        out["isolated"] = (g["isolated"] if mode != "hook" else not g["isolated"], str(g["isolation"]))
    finally:
        decoy.kill()
        decoy.wait()
        listener.close()
        tcp.close()
        shutil.rmtree(outside, ignore_errors=True)
        os.environ.pop("GEOPD_FAKE_SECRET", None)
    return out


if __name__ == "__main__":
    result = battery(sys.argv[1], guard=sys.argv[2:] != ["kernel"])
    print(json.dumps({"uid": os.getuid(), "checks": result}))
