"""The search space and the optimiser of ``--bayes_opt_iters``: Optuna distributions of
PB's ``~BAYESIAN~`` / ``~LOG_BAYESIAN~`` / ``~INT_BAYESIAN~`` ranges, ax's default
Sobol budget, and :class:`SobolThenGPSampler` (scrambled Sobol points, then
Gaussian-process Bayesian optimisation, as ax's default generation strategy).
"""

from __future__ import annotations

import warnings
from typing import Dict, Sequence

import optuna

__all__ = ["SobolThenGPSampler", "distributions", "num_init_trials"]


def distributions(bayes_params: Sequence[dict]) -> Dict[str, object]:
    """Optuna distributions of PB's parsed ``~BAYESIAN~`` keys (``{"name", "bounds",
    "log_scale", "value_type"}`` as PB's ``set_optimizable_params_and_bounds`` makes
    them), with one sentence per bad range."""
    from optuna.distributions import FloatDistribution, IntDistribution

    out: Dict[str, object] = {}
    for p in bayes_params:
        name, bounds, log, kind = (
            p["name"],
            p["bounds"],
            p["log_scale"],
            p["value_type"],
        )
        keyword = {(False, "float"): "~BAYESIAN~", (True, "float"): "~LOG_BAYESIAN~"}
        keyword = keyword.get((log, kind), "~INT_BAYESIAN~")
        where = f"{name}{keyword} {bounds!r}"
        numbers = (int, float) if kind == "float" else (int,)
        if not (
            isinstance(bounds, list)
            and len(bounds) == 2
            and all(isinstance(b, numbers) and not isinstance(b, bool) for b in bounds)
        ):
            kinds = "numbers" if kind == "float" else "integers"
            raise ValueError(
                f"search space {where}: write [low, high], two {kinds} (e.g. "
                f"{name.rsplit('/', 1)[-1]}{keyword}: [1, 10])"
            )
        low, high = bounds
        if not low < high:
            raise ValueError(f"search space {where}: low must be below high")
        if log and low <= 0:
            raise ValueError(
                f"search space {where}: a log-scale range must be above 0; "
                "use ~BAYESIAN~ for a linear one"
            )
        if kind == "int":
            out[name] = IntDistribution(low, high, log=log)
        else:
            out[name] = FloatDistribution(float(low), float(high), log=log)
    if not out:
        raise ValueError(
            "--bayes_opt_iters: the configs have no ~BAYESIAN~, ~LOG_BAYESIAN~ or "
            "~INT_BAYESIAN~ key to search (e.g. --loss_funcs~APPLY~3 "
            "{so_weight~LOG_BAYESIAN~: [0.01, 100]})"
        )
    return out


def num_init_trials(num_parameters: int) -> int:
    """ax's default Sobol budget when the number of trials is not given (as PB's
    ``AxClient`` did not): ``max(5, 2 x parameters)``."""
    return max(5, 2 * num_parameters)


class SobolThenGPSampler(optuna.samplers.BaseSampler):
    """Scrambled Sobol points for trials ``0 .. num_init - 1``, then Optuna's
    ``GPSampler`` (ax's "Sobol, then GP + EI" generation strategy).

    Hand-written: Optuna has no sequence of samplers (ax's ``GenerationStrategy``),
    and ``GPSampler``'s start-up sampler is asked one parameter at a time, which a
    QMC sequence cannot serve. The Sobol phase is handed the whole search space, so
    trial 0 is already a Sobol point.
    """

    def __init__(self, space, num_init: int, seed: int):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.sobol = optuna.samplers.QMCSampler(
                qmc_type="sobol", scramble=True, seed=seed
            )
        self.gp = optuna.samplers.GPSampler(seed=seed, n_startup_trials=num_init)
        self.space = dict(space)
        self.num_init = num_init

    def phase(self, trial) -> str:
        return "Sobol" if trial.number < self.num_init else "GP"

    def infer_relative_search_space(self, study, trial):
        if self.phase(trial) == "Sobol":
            return dict(self.space)
        return self.gp.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        if self.phase(trial) == "Sobol":
            return self.sobol.sample_relative(study, trial, search_space)
        return self.gp.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        # only for a parameter outside the relative search space
        return self.gp.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial):
        self.gp.before_trial(study, trial)

    def after_trial(self, study, trial, state, values):
        self.gp.after_trial(study, trial, state, values)

    def reseed_rng(self):
        self.sobol.reseed_rng()
        self.gp.reseed_rng()
