"""The Optuna side of ``OptunaBayesOptRunner`` (:mod:`.optuna_runner`): the study kept
in the search's journal, its trials, their rows in PB's ``bayes_opt`` table and the
best trial. A mixin: it needs none of powerful-benchmarker's code, only the
attributes its ``BayesOptRunner`` sets (``bayes_params``, ``eval_primary_metric``,
...) and the runner's ``optuna_log_folder``, ``journal_path``, ``init_trials``.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
from typing import Dict, Optional

import optuna
from optuna.trial import TrialState

from .search_space import SobolThenGPSampler, distributions, num_init_trials

__all__ = ["JOURNAL", "OPTUNA_LOG_FOLDER", "OptunaStudy"]

#: the study's journal: ``<experiment>/bayes_opt_optuna_logs/study.journal``
OPTUNA_LOG_FOLDER = "bayes_opt_optuna_logs"
JOURNAL = "study.journal"


class OptunaStudy:
    """The study and its trials, for ``OptunaBayesOptRunner``."""

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

    @staticmethod
    def finished_trial_numbers(study) -> set:
        return {
            t.number
            for t in study.get_trials(deepcopy=False)
            if t.state in (TrialState.COMPLETE, TrialState.FAIL)
        }

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
        return next(t for t in study.get_trials(deepcopy=False) if t.number == number)

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
