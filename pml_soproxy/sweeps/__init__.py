"""Sweeps: grids of paired runs, N local processes or submitit jobs (SLURM), and the
paired comparison table.

spec.py            the grid spec from a YAML file and flags, checked
plan.py            its expansion into checked run configs, sweep.json, run states
worker.py          one planned run in this process: folder lock, log file,
                   train / resume / skip
local.py           N worker processes on this machine, Ctrl-C / SIGTERM stop them
cluster.py         submitit jobs (SLURM, or submitit's local executor), requeued
runner.py          a sweep from start to end: plan, what is left, executor, report
compare.py         the finished runs of a sweep, grouped for the comparison
paired_stats.py    mean ± std per value, paired differences and t against the
                   baseline, selection on validation
compare_output.py  the comparison's table (compare.md), figure and JSON
commands.py        the ``sweep`` and ``compare`` commands of ``pml-soproxy``
"""

from .compare import compare_sweep, format_comparison, write_comparison
from .plan import expand, read_plan
from .runner import SweepError, prepare_plan, run_sweep
from .spec import build_spec
