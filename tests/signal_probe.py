"""A stand-in training worker for the signal tests (tests/test_launch.py, tests/test_slurm_cluster.py):
started by torchrun through `geopd launch`, it waits for SIGUSR1 and records, per rank, whether it
came, its process, thread count and interpreter; it never imports torch."""
import json
import os
import signal
import sys
import time

out = sys.argv[1]
rank = os.environ.get("RANK", "0")
got = []
signal.signal(signal.SIGUSR1, lambda signum, frame: got.append(signum))
with open(os.path.join(out, f"ready-{rank}"), "w") as fh:
    fh.write(str(os.getpid()))
deadline = time.time() + float(sys.argv[2] if len(sys.argv) > 2 else 120)
while not got and time.time() < deadline:
    time.sleep(0.05)
record = {"rank": rank, "signal": "USR1" if got else "none", "pid": os.getpid(), "sid": os.getsid(0),
          "omp": os.environ.get("OMP_NUM_THREADS"), "local_world": os.environ.get("LOCAL_WORLD_SIZE"),
          "python": sys.executable}
with open(os.path.join(out, f"rank-{rank}.json"), "w") as fh:
    json.dump(record, fh)
