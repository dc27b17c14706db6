"""The signals that stop a training job after its current step (geopd.train.loop): SIGUSR1, which
Slurm sends `lead` seconds before a training job's time limit (sbatch --signal; geopd.launch
relays it to every worker), and SIGTERM. Torch-free: `geopd train` installs `note_early_signal`
first thing, before torch is imported, so a signal that arrives while the process starts up (a
32B teacher's engine takes minutes) is kept for the trainer's loop rather than lost."""
from __future__ import annotations

import signal

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
early: list[int] = []  # received before the trainer's loop began


def note_early_signal(signum, frame) -> None:
    early.append(signum)


def install_early_handlers() -> None:
    for sig in STOP_SIGNALS:
        signal.signal(sig, note_early_signal)
