"""A sweep from start to end: plan (or re-read and extend the plan), find what is
left to do, run it with the chosen executor, report.

Run states come from the run folders themselves: a folder with ``results.json`` is
finished and skipped, one with a checkpoint is resumed, any other is started. So a
sweep interrupted halfway (Ctrl-C, a killed job, a reboot) resumes with the same
command, and only its unfinished runs train.
"""

import os
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from ..training.config import ConfigError
from .plan import expand, merge_plans, plan_path, read_plan, run_state, write_plan
from .worker import BUSY, FAILED, FINISHED, INTERRUPTED

EXECUTORS = ("processes", "local", "slurm")
#: failures named in the error line; the others are counted
SHOWN_FAILURES = 3


class SweepError(ValueError):
    """Runs of a sweep that failed (each one's log names why)."""


def prepare_plan(sweep_dir: str, spec: Dict[str, Any],
                 echo: Callable[[str], None] = print) -> Dict[str, Any]:  # fmt: skip
    """Expand ``spec``; against an existing plan in ``sweep_dir``, check that no
    planned run changes (new grid values may add runs). Writes the plan."""
    plan = expand(spec)
    if os.path.isfile(plan_path(sweep_dir)):
        added = merge_plans(sweep_dir, read_plan(sweep_dir), plan)
        if added:
            echo(f"adding {len(added)} run(s) to the sweep: {', '.join(added)}")
    write_plan(sweep_dir, plan)
    return plan


def run_states(sweep_dir: str, plan: Dict[str, Any]) -> Dict[str, str]:
    return {run["name"]: run_state(sweep_dir, run) for run in plan["runs"]}


def describe_states(states: Mapping[str, str]) -> str:
    counts = {
        s: list(states.values()).count(s) for s in ("finished", "unfinished", "new")
    }
    return (f"{len(states)} runs: {counts['finished']} finished, {counts['unfinished']} "
            f"to resume, {counts['new']} to start")  # fmt: skip


def run_sweep(
    sweep_dir: str,
    plan: Dict[str, Any],
    executor: str = "processes",
    processes: int = 1,
    threads: Optional[int] = None,
    visible_devices: Optional[Sequence[str]] = None,
    runs_per_job: int = 1,
    parameters: Optional[Mapping[str, Any]] = None,
    echo: Callable[[str], None] = print,
    progress: bool = True,
) -> Dict[str, Dict[str, str]]:
    """Run every run of ``plan`` that has not finished; returns their outcomes.
    Raises :class:`SweepError` if any failed, ``SweepInterrupted`` on Ctrl-C."""
    from tqdm.auto import tqdm

    from .local import SweepInterrupted

    if executor not in EXECUTORS:
        raise ConfigError(
            f"--executor {executor!r}: expected one of {', '.join(EXECUTORS)}"
        )
    states = run_states(sweep_dir, plan)
    echo(f"{sweep_dir}: {describe_states(states)}")
    todo = [r["name"] for r in plan["runs"] if states[r["name"]] != "finished"]
    if not todo:
        echo("nothing left to run")
        return {}
    bar = tqdm(total=len(todo), unit="run", desc="sweep", disable=not progress)
    on_outcome = outcome_reporter(bar, progress, echo)
    try:
        if executor == "processes":
            from .local import run_processes

            outcomes = run_processes(sweep_dir, todo, processes, threads,
                                     visible_devices, on_outcome)  # fmt: skip
        else:
            from .cluster import run_submitit

            outcomes = run_submitit(sweep_dir, todo, executor, runs_per_job,
                                    parameters or {}, on_outcome, echo)  # fmt: skip
    except SweepInterrupted:
        bar.close()
        echo_interrupted(sweep_dir, plan, echo)
        raise
    bar.close()
    check_outcomes(sweep_dir, todo, outcomes, echo)
    return outcomes


def outcome_reporter(bar, progress: bool, echo) -> Callable[[Dict[str, str]], None]:
    """What reports each run's outcome: one line (with its log unless it
    finished) above the progress ``bar``, or through ``echo`` without one."""

    def on_outcome(ended: Dict[str, str]):
        bar.update(1)
        line = f"{ended['status']}: {ended['name']}: {ended['message']}"
        if ended["status"] != FINISHED and ended["log"]:
            line += f" (log: {ended['log']})"
        if progress:
            bar.write(line)
        else:
            echo(line)

    return on_outcome


def echo_interrupted(sweep_dir: str, plan: Dict[str, Any], echo) -> None:
    after = run_states(sweep_dir, plan)
    left = [n for n, s in after.items() if s != "finished"]
    echo(f"Interrupted: {len(after) - len(left)} of {len(after)} runs finished. "
         f"Every run keeps its last epoch checkpoint: `pml-soproxy sweep "
         f"{sweep_dir}` resumes the {len(left)} unfinished ones.")  # fmt: skip


def check_outcomes(sweep_dir: str, todo: List[str],
                   outcomes: Dict[str, Dict[str, str]], echo):  # fmt: skip
    failed = [o for o in outcomes.values() if o["status"] in (FAILED, INTERRUPTED)]
    busy = [o["name"] for o in outcomes.values() if o["status"] == BUSY]
    lost = [n for n in todo if n not in outcomes]
    if busy:
        echo(f"{len(busy)} run(s) were running in another process and were left to it: "
             f"{', '.join(busy)}")  # fmt: skip
    if failed or lost:
        shown = "; ".join(f"{o['name']}: {o['message']} (log: {o['log']})"
                          for o in failed[:SHOWN_FAILURES])  # fmt: skip
        more = len(failed) - SHOWN_FAILURES
        extra = f"; and {more} more" if more > 0 else ""
        gone = f"; {len(lost)} run(s) never reported" if lost else ""
        raise SweepError(
            f"{len(failed) + len(lost)} of {len(todo)} runs of the sweep in "
            f"{sweep_dir} did not finish: {shown}{extra}{gone}; fix the cause and "
            "run the same command again: finished runs are kept"
        )
    done = len(todo) - len(busy)
    echo(f"{done} of {len(todo)} run(s) finished; compare the sweep with "
         f"`pml-soproxy compare {sweep_dir}`")  # fmt: skip
