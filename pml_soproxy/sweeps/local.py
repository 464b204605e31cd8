"""N runs at a time on this machine: a pool of spawned worker processes, each
taking the next run from a queue until none is left.

Hand-written rather than ``concurrent.futures.ProcessPoolExecutor``: a sweep must
stop cleanly on Ctrl-C or SIGTERM (every worker stops its run after its last
checkpoint, and no worker starts another), survive a worker killed by the system
(its run is reported, the others go on) and give each worker its own threads and
GPU; the executor offers none of these.
"""

import contextlib
import multiprocessing
import os
import queue
import signal
import time
from typing import Callable, Dict, Iterator, List, Optional, Sequence

from .worker import FAILED, INTERRUPTED, outcome

#: seconds a worker gets to stop its run after SIGTERM before it is killed
STOP_TIMEOUT = 60


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during a sweep; ``outcomes`` of the runs that ended."""

    def __init__(self, outcomes: Dict[str, Dict[str, str]]):
        super().__init__("sweep interrupted")
        self.outcomes = outcomes


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM behaves like Ctrl-C (as in a single run)."""
    try:
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def worker_main(sweep_dir: str, tasks, results, threads: int):
    """A worker process: runs from ``tasks`` until the ``None`` sentinel."""
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        from .worker import configure_logging, run_planned

        configure_logging()
        import torch

        torch.set_num_threads(threads)
        while True:
            name = tasks.get()
            if name is None:
                break
            results.put(("start", name, os.getpid()))
            ended = run_planned(sweep_dir, name)
            results.put(("end", name, ended))
            if ended["status"] == INTERRUPTED:
                break
    except KeyboardInterrupt:
        pass


@contextlib.contextmanager
def environment(**values: Optional[str]) -> Iterator[None]:
    """``os.environ`` changed while a worker is spawned (it copies it then)."""
    saved = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            if v is not None:
                os.environ[k] = v
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def available_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class WorkerPool:
    """The spawned workers of :func:`run_processes`, the queues they share and what
    they reported: ``workers`` (process -> index), ``running`` (pid -> run name),
    ``outcomes`` (run name -> outcome)."""

    def __init__(
        self,
        sweep_dir: str,
        names: Sequence[str],
        count: int,
        threads: int,
        visible_devices: Optional[Sequence[str]],
        on_outcome: Callable[[Dict[str, str]], None],
    ):
        self.sweep_dir, self.names, self.threads = sweep_dir, names, threads
        self.visible_devices, self.on_outcome = visible_devices, on_outcome
        self.context = multiprocessing.get_context("spawn")
        self.tasks, self.results = self.context.Queue(), self.context.Queue()
        for name in names:
            self.tasks.put(name)
        for _ in range(count):
            self.tasks.put(None)
        self.workers: Dict[object, int] = {}
        self.running: Dict[int, str] = {}
        self.outcomes: Dict[str, Dict[str, str]] = {}

    def start(self, index: int):
        devices = self.visible_devices
        device = devices[index % len(devices)] if devices else None
        process = self.context.Process(
            target=worker_main,
            args=(self.sweep_dir, self.tasks, self.results, self.threads),
            name=f"pml-soproxy-sweep-{index}",
        )
        threads = str(self.threads)
        with environment(OMP_NUM_THREADS=threads, CUDA_VISIBLE_DEVICES=device):
            process.start()
        self.workers[process] = index

    def handle(self, message):
        if message[0] == "start":
            self.running[message[2]] = message[1]
            return
        _, name, ended = message
        for pid, held in list(self.running.items()):
            if held == name:
                del self.running[pid]
        self.outcomes[name] = ended
        self.on_outcome(ended)

    def reap(self):
        """Workers that ended: a run a dead worker held is reported; a
        replacement takes its place while runs wait."""
        for process in [p for p in self.workers if not p.is_alive()]:
            index = self.workers.pop(process)
            name = self.running.pop(process.pid, None)
            if name is None:
                continue
            self.handle(("end", name, outcome(
                name, FAILED, f"its worker process died (exit code "
                f"{process.exitcode}: killed, or out of memory?)")))  # fmt: skip
            if len(self.outcomes) + len(self.running) < len(self.names):
                self.start(index)


def run_processes(
    sweep_dir: str,
    names: Sequence[str],
    processes: int,
    threads: Optional[int] = None,
    visible_devices: Optional[Sequence[str]] = None,
    on_outcome: Callable[[Dict[str, str]], None] = lambda o: None,
) -> Dict[str, Dict[str, str]]:
    """Run ``names`` in ``processes`` worker processes; ``threads`` torch threads
    each (default: the cores shared out); worker i sees GPU
    ``visible_devices[i % len]`` as its only one (CUDA_VISIBLE_DEVICES)."""
    count = max(1, min(processes, len(names)))
    threads = threads or max(1, available_cores() // count)
    pool = WorkerPool(sweep_dir, names, count, threads, visible_devices, on_outcome)
    try:
        with sigterm_interrupts():
            for index in range(count):
                pool.start(index)
            while len(pool.outcomes) < len(names) and pool.workers:
                try:
                    pool.handle(pool.results.get(timeout=1.0))
                except queue.Empty:
                    pool.reap()
    except KeyboardInterrupt:
        stop(list(pool.workers), pool.results, pool.handle)
        raise SweepInterrupted(pool.outcomes) from None
    finally:
        for process in pool.workers:
            process.join(timeout=STOP_TIMEOUT)
    return pool.outcomes


def stop(processes: List, results, handle):
    """SIGTERM to every worker (each stops its run as on Ctrl-C: the last epoch
    checkpoint stays, a checkpoint being written stays a temporary file), a kill
    to those that do not stop within STOP_TIMEOUT; their reports are collected
    meanwhile (a worker cannot exit before what it queued is read)."""
    with contextlib.suppress(KeyboardInterrupt):
        for process in processes:
            if process.is_alive():
                process.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT
        while any(p.is_alive() for p in processes) and time.monotonic() < deadline:
            try:
                handle(results.get(timeout=0.2))
            except queue.Empty:
                pass
        for process in processes:
            if process.is_alive():
                process.kill()
            process.join()
        while True:
            try:
                handle(results.get(timeout=0.2))
            except queue.Empty:
                break
