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
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import logging
import math
import os
import re
import secrets
import shutil
import sys
import types
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import optuna
import yaml
from optuna.trial import TrialState

from ..training.checkpoints import atomic_write

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

PB_MODULE = "powerful_benchmarker.runners.bayes_opt_runner"

#: What PB's bayes_opt_runner imports from ax at module level: {module: names}.
AX_NAMES: Dict[str, Tuple[str, ...]] = {
    "ax.service.ax_client": ("AxClient",),
    "ax.service.utils.best_point": ("get_best_raw_objective_point",),
    "ax.plot.render": ("plot_config_to_html",),
    "ax.utils.report.render": ("render_report_elements",),
    "ax.plot.contour": ("interact_contour",),
    "ax.modelbridge.registry": ("Models",),
    "ax.core.base_trial": ("TrialStatus",),
    "ax.plot.slice": ("interact_slice",),
    "ax.plot.helper": ("get_range_parameters",),
    "ax.core.parameter": ("RangeParameter", "ParameterType"),
}

#: BayesOptRunner methods that use ax (or its files), replaced below.
REPLACED = (
    "run",
    "get_ax_client",
    "get_parameters_and_trial_index",
    "get_all_log_paths",
    "save_new_log",
    "update_records",
    "update_bayes_opt_search_space",
    "save_best_parameters",
    "plot_progress",
)

OPTUNA_LOG_FOLDER = "bayes_opt_optuna_logs"
JOURNAL = "study.journal"


class AxPlaceholder:
    """Stands for an ax name PB imports; any use says why it is gone."""

    def __init__(self, name: str):
        self._name = name

    def _fail(self, *args, **kwargs):
        raise RuntimeError(
            f"powerful-benchmarker's BayesOptRunner reached ax's {self._name}, which "
            "pml_soproxy.benchmarker.bayes_opt replaces (Optuna); please report this"
        )

    __call__ = _fail

    def __getattr__(self, attribute):
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        self._fail()


def import_bayes_opt_runner():
    """PB's ``bayes_opt_runner`` module, imported with its ax names bound to
    :class:`AxPlaceholder`\\ s (whether or not some ax is installed: none of them is
    used by :func:`runner_class`'s subclass). ``sys.modules`` is left as it was,
    but for the PB module itself."""
    if PB_MODULE in sys.modules:
        return sys.modules[PB_MODULE]
    saved = {name: sys.modules.get(name) for name in AX_NAMES}
    try:
        for name, attributes in AX_NAMES.items():
            stub = types.ModuleType(name)
            stub.__dict__.update({a: AxPlaceholder(f"{name}.{a}") for a in attributes})
            sys.modules[name] = stub
        return importlib.import_module(PB_MODULE)
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


#####################
### search space ###
#####################


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


###############
### runner ###
###############


def _objective(output) -> Tuple[float, Optional[float]]:
    """PB's experiment result: ``(mean, SEM)`` over several folds, a bare mean
    over one; ``(0, 0)`` after a NaN loss."""
    if isinstance(output, (tuple, list)):
        mean, sem = output
        return float(mean), (None if sem is None else float(sem))
    return float(output), None


def _atomic_yaml(path: str, data) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            yaml.safe_dump(data, f, default_flow_style=False, sort_keys=False)

    atomic_write(path, write)


@contextlib.contextmanager
def _only_experiment_and_reproductions(module, name: str):
    """PB's ``create_accuracy_report`` collects ``glob("<best>*")``, which with 11
    or more trials also takes trial ``<best>0``, ``<best>1``, ... (best ``e1``
    would average in ``e10``-``e19``): keep the best trial and its reproductions."""
    keep = re.compile(re.escape(name) + r"(_reproduction\d+)?")
    real = module.glob

    def only(pattern, *args, **kwargs):
        found = real.glob(pattern, *args, **kwargs)
        return [p for p in found if keep.fullmatch(os.path.basename(p))]

    module.glob = types.SimpleNamespace(glob=only, escape=real.escape)
    try:
        yield
    finally:
        module.glob = real


@functools.lru_cache(maxsize=None)
def runner_class():
    """``OptunaBayesOptRunner``, PB's ``BayesOptRunner`` subclassed (PB is imported
    on the first call)."""
    from . import runner as _launcher

    search_path = _launcher._runner_class()
    pb = import_bayes_opt_runner()

    class OptunaBayesOptRunner(pb.BayesOptRunner):
        """PB's ``BayesOptRunner`` on Optuna, with the launcher's config search
        path (``--extra_config_folder``\\ s, ``benchmarker_configs/``, PB's)."""

        find_config = search_path.find_config
        get_root_config_paths = search_path.get_root_config_paths

        def __init__(
            self,
            bayes_opt_iters: int,
            reproductions,
            config_folders: Sequence[str] = (),
            init_trials: Optional[int] = None,
            **kwargs,
        ):
            self.extra_config_folders = [str(f) for f in config_folders]
            self.init_trials = init_trials
            super().__init__(bayes_opt_iters, reproductions, **kwargs)
            self.optuna_log_folder = os.path.join(
                self.bayes_opt_root_experiment_folder, OPTUNA_LOG_FOLDER
            )
            self.journal_path = os.path.join(self.optuna_log_folder, JOURNAL)

        @property
        def config_folders(self) -> List[str]:
            return self.extra_config_folders + [self.root_config_folder]

        ### the optimiser ###

        def get_study(self):
            """The study in the journal (created on the first run)."""
            os.makedirs(self.optuna_log_folder, exist_ok=True)
            storage = optuna.storages.JournalStorage(
                optuna.storages.journal.JournalFileBackend(self.journal_path)
            )
            space = distributions(self.bayes_params)
            names = optuna.get_all_study_names(storage)
            if names:
                study = optuna.load_study(study_name=names[0], storage=storage)
            else:
                study = optuna.create_study(
                    study_name=self.experiment_name,
                    storage=storage,
                    direction="maximize",
                )
            started = {
                "objective": self.eval_primary_metric,
                "search_space": self.space_record(space),
                "init_trials": self.init_trials or num_init_trials(len(space)),
                "seed": secrets.randbits(31),
            }
            for key, value in started.items():  # kept from the search's first run
                if key not in study.user_attrs:
                    study.set_user_attr(key, value)
            attrs = study.user_attrs
            if attrs["objective"] != self.eval_primary_metric:
                raise ValueError(
                    f"{self.journal_path} optimises {attrs['objective']}, this "
                    f"config's primary_metric is {self.eval_primary_metric}: keep "
                    "the metric, or search under a new --experiment_name"
                )
            if attrs["search_space"] != started["search_space"]:
                logging.warning(
                    "The search space differs from the one this search started "
                    "with (%s); new trials use the new ranges, and the Gaussian "
                    "process leaves out parameters whose range differs between "
                    "completed trials",
                    attrs["search_space"],
                )
            if self.init_trials not in (None, attrs["init_trials"]):
                logging.warning(
                    "--bayes_opt_init_trials %d ignored: this search started with %d",
                    self.init_trials,
                    attrs["init_trials"],
                )
            study.sampler = SobolThenGPSampler(
                space, study.user_attrs["init_trials"], study.user_attrs["seed"]
            )
            return study, space

        @staticmethod
        def space_record(space) -> Dict[str, str]:
            return {name: repr(d) for name, d in space.items()}

        def get_ax_client(self):
            return self.get_study()[0]

        def update_bayes_opt_search_space(self, study):
            """Nothing to do: each trial is asked with the ranges read now."""

        def get_all_log_paths(self):
            return [self.journal_path] if os.path.isfile(self.journal_path) else []

        def save_new_log(self, study):
            """Nothing to do: the journal is appended (and fsynced) on every change."""

        def read_yaml_and_find_bayes(self, find_bayes_params=True, **kwargs):
            """PB's, plus a check of the search space; a first run refused for it
            leaves no experiment folder behind (PB would resume from its configs)."""
            folder = self.bayes_opt_root_experiment_folder
            existed = os.path.isdir(folder)
            out = super().read_yaml_and_find_bayes(find_bayes_params, **kwargs)
            if find_bayes_params:
                try:
                    distributions(out[1])
                except ValueError:
                    if not existed:
                        shutil.rmtree(folder, ignore_errors=True)
                    raise
            return out

        def delete_sub_experiment_folder(self, sub_experiment_name):
            """PB's; a trial stopped before its folder was made has none to delete."""
            if os.path.isdir(self.get_sub_experiment_path(sub_experiment_name)):
                super().delete_sub_experiment_folder(sub_experiment_name)

        ### the search ###

        def run(self):
            """PB's ``BayesOptRunner.run`` loop on the study."""
            from pytorch_metric_learning.utils import logging_presets
            from tqdm import tqdm

            study, space = self.get_study()
            record_keeper, _, _ = logging_presets.get_record_keeper(
                self.csv_folder, self.tensorboard_folder
            )
            self.record_missing(record_keeper, study)
            temp_YR_for_config_diffs = self.read_yaml_and_find_bayes(
                find_bayes_params=False
            )
            done = self.finished_trial_numbers(study)
            progress = tqdm(
                total=self.bayes_opt_iters,
                initial=len(done & set(range(self.bayes_opt_iters))),
                desc="Bayesian optimisation trials",
                unit="trial",
            )
            for i in range(self.bayes_opt_iters):
                if i in done:
                    continue
                logging.info("Optimization iteration %d" % i)
                pb.c_f.save_config_files(
                    self.YR.args.place_to_save_configs,
                    temp_YR_for_config_diffs.args.dict_of_yamls,
                    True,
                    [i],
                )
                sub_experiment_name = self.get_sub_experiment_name(i)
                parameters, trial_index, experiment_func = (
                    self.get_parameters_and_trial_index(
                        (study, space), sub_experiment_name, i
                    )
                )
                mean, sem = _objective(experiment_func(parameters, sub_experiment_name))
                self.tell(study, trial_index, mean, sem)
                self.update_records(record_keeper, study, i)
                self.plot_progress(study)
                progress.update(1)
            progress.close()
            logging.info("DONE BAYESIAN OPTIMIZATION")
            best_sub_experiment_name = self.save_best_parameters(record_keeper, study)
            self.test_model(best_sub_experiment_name)
            self.reproduce_results(best_sub_experiment_name)
            self.create_accuracy_report(best_sub_experiment_name)
            logging.info("##### FINISHED #####")
            return self.best_values(study)

        @staticmethod
        def finished_trial_numbers(study) -> set:
            return {
                t.number
                for t in study.get_trials(deepcopy=False)
                if t.state in (TrialState.COMPLETE, TrialState.FAIL)
            }

        def get_parameters_and_trial_index(self, study_and_space, name, index):
            """Trial ``index``'s parameters: those of the trial an interrupted run
            left running (PB then resumes its folder), or the optimiser's next."""
            study, space = study_and_space
            trials = {t.number: t for t in study.get_trials(deepcopy=False)}
            if index in trials:
                return dict(trials[index].params), index, self.resume_training
            trial = study.ask(fixed_distributions=space)
            if trial.number != index:
                raise RuntimeError(
                    f"{self.journal_path}: the optimiser made trial {trial.number} "
                    f"for iteration {index}; the journal does not belong to this "
                    "experiment folder"
                )
            parameters = dict(trial.params)
            _atomic_yaml(
                self.most_recent_parameters_filename,
                {"parameters": parameters, "trial_index": index},
            )
            return parameters, index, self.run_new_experiment

        def tell(self, study, number: int, mean: float, sem: Optional[float]):
            """Finish trial ``number``; a NaN objective fails it (as Optuna would)."""
            trial = self.trial(study, number)
            # Optuna keeps one value per trial: the folds' standard error is an attribute
            study._storage.set_trial_user_attr(trial._trial_id, "SEM", sem)
            if math.isfinite(mean):
                study.tell(number, mean)
            else:
                logging.warning("Trial %d: objective %r, marked failed", number, mean)
                study.tell(number, state=TrialState.FAIL)

        @staticmethod
        def trial(study, number: int):
            return next(
                t for t in study.get_trials(deepcopy=False) if t.number == number
            )

        ### records and summaries ###

        def trial_row(self, study, trial) -> dict:
            row = {
                "trial_index": trial.number,
                "arm_name": f"{trial.number}_0",
                "trial_status": trial.state.name,
                "generation_method": study.sampler.phase(trial),
                self.eval_primary_metric: trial.value,
                f"SEM_{self.eval_primary_metric}": trial.user_attrs.get("SEM"),
            }
            row.update({k.replace("/", "_"): v for k, v in trial.params.items()})
            return row

        def update_records(self, record_keeper, study, iteration):
            """One row of table ``bayes_opt`` per finished trial, as PB's."""
            trial = self.trial(study, iteration)
            record_keeper.update_records(
                self.trial_row(study, trial),
                global_iteration=iteration,
                input_group_name_for_non_objects=self.bayes_opt_table_name,
            )
            record_keeper.save_records()

        def record_missing(self, record_keeper, study):
            """Rows of trials finished by a run stopped before it recorded them."""
            table = self.bayes_opt_table_name
            recorded = set()
            if record_keeper.table_exists(table):
                q = record_keeper.query(f"SELECT trial_index FROM {table}")
                recorded = {int(r["trial_index"]) for r in q}
            for number in sorted(self.finished_trial_numbers(study) - recorded):
                self.update_records(record_keeper, study, number)

        def best_trial(self, study):
            complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if not complete:
                raise RuntimeError(
                    f"{self.bayes_opt_root_experiment_folder}: no trial finished with "
                    "a value; see the trials' logs"
                )
            return max(complete, key=lambda t: (t.value, -t.number))

        def best_values(self, study):
            best = self.best_trial(study)
            return best.value, best.user_attrs.get("SEM")

        def save_best_parameters(self, record_keeper, study):
            """``best_parameters.yaml`` as PB writes it."""
            best = self.best_trial(study)
            name = self.get_sub_experiment_name(best.number)
            logging.info("BEST SUB EXPERIMENT NAME: %s" % name)
            sem = best.user_attrs.get("SEM")
            _atomic_yaml(
                self.best_parameters_filename,
                {
                    "best_sub_experiment_name": name,
                    "best_parameters": dict(best.params),
                    "best_values": {
                        self.eval_primary_metric: {
                            "mean": float(best.value),
                            "SEM": None if sem is None else float(sem),
                        }
                    },
                },
            )
            return name

        def plot_progress(self, study):
            """``optimization_history.png`` and ``optimization_slice.png`` (Optuna's
            matplotlib plots) in place of PB's ax ``optimization_plots.html``."""
            import matplotlib
            import matplotlib.pyplot as pyplot
            from optuna.visualization import matplotlib as plots

            target = self.eval_primary_metric
            for filename, plot in (
                ("optimization_history.png", plots.plot_optimization_history),
                ("optimization_slice.png", plots.plot_slice),
            ):
                with warnings.catch_warnings(), matplotlib.rc_context():
                    warnings.simplefilter(
                        "ignore", optuna.exceptions.ExperimentalWarning
                    )
                    # a parameter with one value so far: its axis is widened
                    warnings.filterwarnings("ignore", "Attempting to set identical")
                    axes = plot(study, target_name=target)
                figure = getattr(axes, "flat", [axes])[0].figure
                path = os.path.join(self.bayes_opt_root_experiment_folder, filename)
                atomic_write(path, lambda tmp: figure.savefig(tmp, format="png"))
                pyplot.close(figure)

        def create_accuracy_report(self, best_sub_experiment_name):
            with _only_experiment_and_reproductions(pb, best_sub_experiment_name):
                return super().create_accuracy_report(best_sub_experiment_name)

    return OptunaBayesOptRunner


##############
### launch ###
##############


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
