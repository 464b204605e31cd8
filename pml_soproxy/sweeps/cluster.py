"""Runs as submitit jobs: SLURM (``--executor slurm``) or submitit's local executor
(``--executor local``, the same code path on one machine, used by the tests).

Each job runs one or more planned runs one after the other (``runs_per_job``), each
an ordinary resumable run folder. A job is ``Checkpointable``: when SLURM
preempts it or its time runs out, submitit requeues it and the new job resumes
each unfinished run from its last epoch checkpoint and skips the finished ones.
submitit pickles the job (its own files, under ``SWEEP_DIR/submitit``); the runs'
results are read from their folders' JSON.
"""

import os
from typing import Any, Callable, Dict, List, Mapping, Sequence

from ..training.config import ConfigError
from .worker import FAILED, INTERRUPTED, outcome

SUBMITIT_FOLDER = "submitit"
EXECUTORS = ("local", "slurm")


def import_submitit():
    try:
        import submitit
    except ImportError:
        raise ConfigError(
            "--executor local/slurm runs the sweep through submitit, which is not "
            "installed: pip install 'pml-soproxy[cluster]' (or pip install submitit), "
            "or use --executor processes"
        ) from None
    return submitit


submitit = import_submitit()


class SweepJob(submitit.helpers.Checkpointable):
    """A submitit job: the given runs of a sweep, one after the other."""

    def __call__(self, sweep_dir: str, names: Sequence[str]) -> List[Dict[str, str]]:
        from .worker import configure_logging, run_planned

        configure_logging()
        outcomes = []
        for name in names:
            print(f"run {name}", flush=True)
            ended = run_planned(sweep_dir, name)
            print(f"run {name}: {ended['status']}, {ended['message']}", flush=True)
            outcomes.append(ended)
            if ended["status"] == INTERRUPTED:
                break
        return outcomes


def executor_parameters(
    executor: str, options: Mapping[str, Any], slurm: Mapping[str, Any]
) -> Dict[str, Any]:
    """submitit's generic parameters (``timeout_min``, ``gpus_per_node``, ...) and
    SLURM-only ones (``--slurm KEY=VALUE`` becomes ``slurm_KEY``)."""
    values = {k: v for k, v in options.items() if v is not None}
    if executor == "slurm":
        values.update({f"slurm_{k}": v for k, v in slurm.items()})
    return values


def run_submitit(
    sweep_dir: str,
    names: Sequence[str],
    executor: str = "local",
    runs_per_job: int = 1,
    parameters: Mapping[str, Any] = (),
    on_outcome: Callable[[Dict[str, str]], None] = lambda o: None,
    echo: Callable[[str], None] = print,
    poll_seconds: float = 2.0,
) -> Dict[str, Dict[str, str]]:
    """Submit the runs as a job array and wait for it; Ctrl-C cancels the jobs
    (each run stops after its last checkpoint)."""
    from .local import SweepInterrupted, sigterm_interrupts

    if executor not in EXECUTORS:
        raise ConfigError(f"--executor {executor!r}: expected one of {EXECUTORS}")
    folder = os.path.join(os.path.abspath(sweep_dir), SUBMITIT_FOLDER, "%j")
    job_executor = submitit.AutoExecutor(folder=folder, cluster=executor)
    try:
        job_executor.update_parameters(
            name=f"pml-soproxy-sweep-{os.path.basename(os.path.abspath(sweep_dir))}",
            **dict(parameters),
        )
    except (ValueError, TypeError) as err:  # submitit names the bad parameter
        raise ConfigError(f"submitit refused the job parameters: {err}") from None
    groups = [list(names[i : i + runs_per_job]) for i in
              range(0, len(names), runs_per_job)]  # fmt: skip
    jobs = job_executor.map_array(
        SweepJob(), [os.path.abspath(sweep_dir)] * len(groups), groups
    )
    echo(f"submitted {len(jobs)} {executor} job(s) ({', '.join(j.job_id for j in jobs)}"
         f"); their logs: {os.path.dirname(folder)}")  # fmt: skip
    outcomes: Dict[str, Dict[str, str]] = {}
    try:
        with sigterm_interrupts():
            for job in submitit.helpers.as_completed(jobs, poll_frequency=poll_seconds):
                group = groups[jobs.index(job)]
                for ended in job_outcomes(job, group):
                    outcomes[ended["name"]] = ended
                    on_outcome(ended)
    except KeyboardInterrupt:
        for job in jobs:
            if not job.done():
                job.cancel(check=False)
        raise SweepInterrupted(outcomes) from None
    return outcomes


def job_outcomes(job, group: Sequence[str]) -> List[Dict[str, str]]:
    """The outcomes a job returned, or, when the job itself failed, one outcome
    per run naming the job's error and log."""
    try:
        return list(job.result())
    except Exception as err:  # submitit re-raises the job's error with its traceback
        lines = [line for line in str(err).strip().splitlines() if line.strip()]
        why = lines[-1] if lines else type(err).__name__
        log = str(job.paths.stderr)
        return [outcome(name, FAILED, f"job {job.job_id} failed: {why}", log)
                for name in group]  # fmt: skip
