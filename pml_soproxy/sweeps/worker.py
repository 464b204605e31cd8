"""One planned run, in this process: lock its folder, send its output to its log
file, then train it, resume it, or skip it when it is finished.

The local process pool and submitit jobs both call :func:`run_planned`; what it
returns is a plain dict (name, status, message, log), so it crosses process
boundaries as it is.
"""

import contextlib
import logging
import os
import sys
import time
import traceback
import warnings
from typing import Any, Dict, Iterator

from .plan import plan_path, read_plan, run_folder, run_state

LOG = "train.log"
LOCK = ".sweep.lock"
#: what a run's outcome can be
FINISHED, SKIPPED, FAILED, INTERRUPTED, BUSY = (
    "finished", "skipped", "failed", "interrupted", "busy")  # fmt: skip


def outcome(name: str, status: str, message: str, log: str = "") -> Dict[str, str]:
    return {"name": name, "status": status, "message": message, "log": log}


@contextlib.contextmanager
def folder_lock(folder: str) -> Iterator[bool]:
    """An exclusive lock on the run folder (released when the process ends, even
    when killed), so that two sweeps of one folder never train a run twice. True
    when this process holds it."""
    try:
        import fcntl
    except ImportError:  # Windows: no locking
        yield True
        return
    with open(os.path.join(folder, LOCK), "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def output_to(path: str) -> Iterator[None]:
    """This process's stdout and stderr (file descriptors and Python streams: the
    progress bars, PML's and our logs) appended to ``path``."""
    sys.stdout.flush()
    sys.stderr.flush()
    with open(path, "a", buffering=1) as log:
        saved = [os.dup(1), os.dup(2)]
        try:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in zip((1, 2), saved):
                os.dup2(copy, fd)
                os.close(copy)


def configure_logging():
    """What ``pml-soproxy`` sets up before training (cli.main), for a worker."""
    logging.getLogger("PML").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad")
    logging.basicConfig(
        level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )


def summary(results: Dict[str, Any]) -> str:
    metric = results["config"]["selection_metric"]
    value = results["test"].get(metric)
    shown = f"test {metric} {100 * value:.2f}%" if value is not None else "tested"
    return f"{shown}, weights of {results['selected']}"


def run_planned(sweep_dir: str, name: str) -> Dict[str, str]:
    """Train, resume or skip the run ``name`` of the sweep in ``sweep_dir``."""
    from ..cli import expected_errors, one_line
    from ..training import train
    from ..training.checkpoints import existing_run_files
    from ..training.config import config_from_dict

    plan = read_plan(sweep_dir)
    run = next((r for r in plan["runs"] if r["name"] == name), None)
    if run is None:
        return outcome(name, FAILED, f"no run {name} in {plan_path(sweep_dir)}")
    folder = os.path.abspath(run_folder(sweep_dir, run))
    os.makedirs(folder, exist_ok=True)
    log = os.path.join(folder, LOG)
    with folder_lock(folder) as locked:
        if not locked:
            return outcome(name, BUSY, "another process is running it", log)
        try:
            state = run_state(sweep_dir, run)
            if state == "finished":
                return outcome(name, SKIPPED, "finished before", log)
            config = config_from_dict(
                dict(run["config"], output_dir=folder),
                f"{plan_path(sweep_dir)}, run {name}",
            )
        except expected_errors() as err:
            return outcome(name, FAILED, one_line(err), log)
        resume = state == "unfinished"
        # a run killed before its first checkpoint: nothing to keep
        overwrite = not resume and bool(existing_run_files(folder))
        with output_to(log):
            print(f"== pml-soproxy sweep {sweep_dir}: run {name}, "
                  f"{'resumed' if resume else 'started'} {time.strftime('%Y-%m-%d %H:%M:%S')}, "
                  f"process {os.getpid()}", flush=True)  # fmt: skip
            try:
                results = train(config, resume=resume, overwrite=overwrite)
            except KeyboardInterrupt:
                print("interrupted; the next sweep resumes this run", flush=True)
                return outcome(name, INTERRUPTED, "interrupted", log)
            except expected_errors() as err:
                message = one_line(err)
                print(f"pml-soproxy: error: {message}", flush=True)
                return outcome(name, FAILED, message, log)
            except Exception as err:  # a bug: its traceback goes to the log
                traceback.print_exc()
                return outcome(name, FAILED, f"{type(err).__name__}: {err}", log)
            print(f"finished: {summary(results)}", flush=True)
        return outcome(name, FINISHED, summary(results), log)
