"""Sweeps: grids of paired runs, N local processes or submitit jobs (SLURM), and the
paired comparison table.

plan.py     the grid spec, its expansion into checked run configs, sweep.json, run states
worker.py   one planned run in this process: folder lock, log file, train / resume / skip
local.py    N worker processes on this machine, Ctrl-C / SIGTERM stop them cleanly
cluster.py  submitit jobs (SLURM, or submitit's local executor), requeued on timeout
runner.py   a sweep from start to end: plan, what is left, the executor, the report
compare.py  mean ± std per value, paired differences and t against the baseline,
            selection on validation, the figure
commands.py the ``sweep`` and ``compare`` commands of ``pml-soproxy``
"""

from .compare import compare_sweep, format_comparison, write_comparison
from .plan import build_spec, expand, read_plan
from .runner import SweepError, prepare_plan, run_sweep
