"""``OptunaBayesOptRunner``: powerful-benchmarker's ``BayesOptRunner`` on Optuna.

Importing this module imports PB (through :func:`.ax_placeholders.import_bayes_opt_runner`);
:func:`.bayes_opt.runner_class` does so on its first call. The class replaces, in its
own namespace, every method of PB's that uses ax (:data:`.ax_placeholders.REPLACED`);
the study and its trials come from :class:`.optuna_study.OptunaStudy`; everything
else (reading the search space, one folder per trial, resuming an interrupted trial,
testing the best trial, the reproductions, the accuracy report, the meta logs) is
PB's own code.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import types
import warnings
from typing import List, Optional, Sequence, Tuple

import optuna
import yaml

from ..training.checkpoints import atomic_write
from .ax_placeholders import import_bayes_opt_runner
from .optuna_study import JOURNAL, OPTUNA_LOG_FOLDER, OptunaStudy
from .runner import _runner_class
from .search_space import distributions

__all__ = ["OptunaBayesOptRunner"]

pb = import_bayes_opt_runner()
_search_path = _runner_class()  # the launcher's runner: its config search path


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


class OptunaBayesOptRunner(OptunaStudy, pb.BayesOptRunner):
    """PB's ``BayesOptRunner`` on Optuna, with the launcher's config search
    path (``--extra_config_folder``\\ s, ``benchmarker_configs/``, PB's)."""

    find_config = _search_path.find_config
    get_root_config_paths = _search_path.get_root_config_paths

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

    ### PB's methods that use ax (REPLACED) ###

    def get_ax_client(self):
        return self.get_study()[0]

    def update_bayes_opt_search_space(self, study):
        """Nothing to do: each trial is asked with the ranges read now."""

    def get_all_log_paths(self):
        return [self.journal_path] if os.path.isfile(self.journal_path) else []

    def save_new_log(self, study):
        """Nothing to do: the journal is appended (and fsynced) on every change."""

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

    def update_records(self, record_keeper, study, iteration):
        """One row of table ``bayes_opt`` per finished trial, as PB's."""
        trial = self.trial(study, iteration)
        record_keeper.update_records(
            self.trial_row(study, trial),
            global_iteration=iteration,
            input_group_name_for_non_objects=self.bayes_opt_table_name,
        )
        record_keeper.save_records()

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
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                # a parameter with one value so far: its axis is widened
                warnings.filterwarnings("ignore", "Attempting to set identical")
                axes = plot(study, target_name=target)
            figure = getattr(axes, "flat", [axes])[0].figure
            path = os.path.join(self.bayes_opt_root_experiment_folder, filename)
            atomic_write(path, lambda tmp: figure.savefig(tmp, format="png"))
            pyplot.close(figure)

    ### PB's methods, extended ###

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

    def create_accuracy_report(self, best_sub_experiment_name):
        with _only_experiment_and_reproductions(pb, best_sub_experiment_name):
            return super().create_accuracy_report(best_sub_experiment_name)
