"""``--bayes_opt_iters N --reproductions M``: powerful-benchmarker's Bayesian search on Optuna.

powerful-benchmarker (PB) 0.9.33's ``BayesOptRunner`` is the MLRC protocol: every
``~BAYESIAN~`` / ``~LOG_BAYESIAN~`` / ``~INT_BAYESIAN~`` key of the merged YAML is a
range to search, each trial is a full cross-validated experiment in its own folder
whose objective is the aggregated (mean over the class-disjoint folds) validation
``primary_metric``, the best trial is evaluated on test (fold models and their
ensemble), reproduced M times next to it and summarised in ``report_*.yaml``.

It imports ax-platform 0.1-era modules (``ax.modelbridge``, ``ax.plot``, ...) that
current ax releases no longer have. ``OptunaBayesOptRunner`` (:func:`runner_class`)
subclasses it and replaces only the methods that talk to ax (:data:`REPLACED`);
everything else (reading the search space, one folder per trial, resuming an
interrupted trial, testing the best trial, the reproductions, the accuracy report,
the meta logs) is PB's own code. The ax names PB imports at module level are bound
to placeholders that raise if anything still calls them (:func:`import_bayes_opt_runner`).

The optimiser is Optuna: scrambled Sobol points for the first ``max(5, 2 x number
of parameters)`` trials (``--bayes_opt_init_trials``), then Gaussian-process
Bayesian optimisation (``GPSampler``: log expected improvement), as ax's default
generation strategy (Sobol, then GP + EI) did for PB. Its state is an append-only
journal, ``bayes_opt_optuna_logs/study.journal``, so an interrupted search resumes
where it stopped.

This module is the ``--bayes_opt_iters`` door (:func:`run`); the parts:

ax_placeholders.py  what PB takes from ax, and PB's module imported without it
search_space.py     the Optuna ranges of PB's keywords, the Sobol-then-GP sampler
optuna_study.py     the study in the journal, its trials, records and best trial
optuna_runner.py    ``OptunaBayesOptRunner``: PB's runner with the ax methods replaced
"""

from __future__ import annotations

import argparse
from typing import List

from .ax_placeholders import (  # noqa: F401 (PB_MODULE, AxPlaceholder: as before)
    AX_NAMES,
    PB_MODULE,
    REPLACED,
    AxPlaceholder,
    import_bayes_opt_runner,
)
from .optuna_study import JOURNAL, OPTUNA_LOG_FOLDER  # noqa: F401
from .search_space import SobolThenGPSampler, distributions, num_init_trials

__all__ = [
    "AX_NAMES",
    "REPLACED",
    "SobolThenGPSampler",
    "distributions",
    "import_bayes_opt_runner",
    "num_init_trials",
    "parse_reproductions",
    "run",
    "runner_class",
]


def runner_class():
    """``OptunaBayesOptRunner``, PB's ``BayesOptRunner`` subclassed (PB is imported
    on the first call)."""
    from .optuna_runner import OptunaBayesOptRunner

    return OptunaBayesOptRunner


def parse_reproductions(text: str):
    """``--reproductions`` as PB's ``run.py`` reads it: ``"M"`` (reproductions
    0 .. M-1) or ``"A,B"`` (A .. B-1, to add some later)."""
    try:
        numbers = [int(x) for x in str(text).split(",")]
    except ValueError:
        numbers = []
    if not 1 <= len(numbers) <= 2 or min(numbers) < 0:
        raise ValueError(
            f"--reproductions {text!r}: write a count (10) or a range start,end (10,20)"
        )
    return numbers


def run(parser: argparse.ArgumentParser, launcher_args, pb_argv: List[str]):
    """The launcher's ``--bayes_opt_iters`` path; returns the best trial's
    ``(mean, SEM)`` validation ``primary_metric``."""
    from . import runner as _launcher

    if launcher_args.bayes_opt_iters < 0:
        parser.error(f"--bayes_opt_iters {launcher_args.bayes_opt_iters}: at least 1")
    if launcher_args.bayes_opt_iters == 0:
        parser.error(
            "--reproductions and --bayes_opt_init_trials need --bayes_opt_iters N: they "
            "belong to a search (to repeat one experiment, use --reproduce_results "
            "<its folder>)"
        )
    if launcher_args.bayes_opt_init_trials is not None and (
        launcher_args.bayes_opt_init_trials < 1
    ):
        parser.error("--bayes_opt_init_trials: at least 1")
    try:
        reproductions = parse_reproductions(launcher_args.reproductions)
    except ValueError as err:
        parser.error(str(err))
    clash = {"--evaluate", "--evaluate_ensemble", "--reproduce_results"}
    clash &= {a.split("=")[0] for a in pb_argv}
    if clash:
        parser.error(
            f"--bayes_opt_iters with {', '.join(sorted(clash))}: a search already "
            "evaluates its best trial and reproductions on test; drop the flag"
        )
    with _launcher._argv([parser.prog] + list(pb_argv)):
        bayes_runner = _launcher.build_runner(
            launcher_args,
            runner_class=runner_class(),
            bayes_opt_iters=launcher_args.bayes_opt_iters,
            reproductions=reproductions,
            init_trials=launcher_args.bayes_opt_init_trials,
        )
        return bayes_runner.run()
