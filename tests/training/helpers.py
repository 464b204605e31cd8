"""Tiny runs of the recipe on the embedded digits data."""

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from pml_soproxy.training import load_config

ROOT = Path(__file__).resolve().parents[2]
FAST = dict(epochs=3, iterations_per_epoch=2, num_workers=0, device="cpu",
            figures=False)  # fmt: skip
TRAIN_FLAGS = ["--dataset", "digits", "--epochs", "3", "--iterations-per-epoch", "2",
               "--device", "cpu", "--no-figures"]  # fmt: skip


def config(tmp_path, name="run", **overrides):
    values = dict(FAST, output_dir=str(tmp_path / name))
    values.update(overrides)
    return load_config("digits", values)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def python(*args, timeout=600, cwd=None, env=None):
    """A fresh interpreter (for SIGKILL tests), with this process's thread count:
    float sums, and so results, are bitwise equal only with the same threads."""
    import torch

    threads = str(torch.get_num_threads())
    environment = dict(os.environ, OMP_NUM_THREADS=threads, PYTHONPATH=str(ROOT))
    environment.update(env or {})
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=environment)  # fmt: skip


def torchrun(*args, nproc=2, timeout=600, cwd=None, log_dir=None):
    """2 processes x 1 thread on a 2-core machine; with ``log_dir``, each rank's
    output goes to its own files there."""
    logs = ["--log-dir", str(log_dir), "--redirects", "3"] if log_dir else []
    return python("-m", "torch.distributed.run", "--nproc_per_node", str(nproc), *logs,
                  "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
                  *args, timeout=timeout, cwd=cwd, env={"OMP_NUM_THREADS": "1"})  # fmt: skip


#: a script run as `python -c`: patches the recipe to be interrupted after epoch K
#: (SIGINT to itself, after that epoch's checkpoint), or to SIGKILL itself halfway
#: through writing epoch K+1's checkpoint; then runs the CLI with the given flags.
INTERRUPTER = """
import json, os, signal, sys
import torch
from pml_soproxy import cli
from pml_soproxy.training import checkpoints, run

how, after = sys.argv[1], int(sys.argv[2])
original_end, original_save = run.Run.end_of_epoch, torch.save

def end_of_epoch(self, trainer):
    keep_going = original_end(self, trainer)
    if how == "sigint" and trainer.epoch == after:
        os.kill(os.getpid(), signal.SIGINT)
    return keep_going

def save(obj, f, *args, **kwargs):
    epoch = json.loads(obj["meta"])["epoch"] if isinstance(obj, dict) and "meta" in obj else 0
    if how == "sigkill" and epoch == after + 1 and os.environ.get("RANK", "0") == "0":
        original_save(obj, f, *args, **kwargs)
        with open(f, "r+b") as half:
            half.truncate(os.path.getsize(f) // 2)
        os.kill(os.getpid(), signal.SIGKILL)
    return original_save(obj, f, *args, **kwargs)

run.Run.end_of_epoch = end_of_epoch
checkpoints.torch.save = save
sys.exit(cli.main(sys.argv[3:]))
"""

SIGKILL_CODES = (-signal.SIGKILL, 128 + signal.SIGKILL)
