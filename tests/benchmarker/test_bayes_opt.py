"""``--bayes_opt_iters N --reproductions M`` (pml_soproxy.benchmarker.bayes_opt):
powerful-benchmarker's BayesOptRunner on Optuna.

Fast checks: every method of PB's runner that uses ax is replaced, the search-space
syntax becomes the right Optuna ranges, the Sobol phase is scipy's Sobol sequence,
bad flags and ranges get one sentence. End to end (slow): a 3-trial search on a
generated CUB200 tree with ``--preset cpu_smoke``, interrupted during trial 1 and
resumed, 2 reproductions of the best trial, the report, and ``--reproduce_results``.
"""

import logging
import math
import os
import sys

import pytest

from .helpers import make_tree, read_tables, require_benchmarker

require_benchmarker()

import numpy as np  # noqa: E402
import optuna  # noqa: E402
import yaml  # noqa: E402
from optuna.distributions import FloatDistribution, IntDistribution  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from pml_soproxy.benchmarker import bayes_opt, compat, runner  # noqa: E402

TESTER = "accuracies_normalized_GlobalEmbeddingSpaceTester_level_0"
FOLDS = ["Test50_50_Partitions2_0", "Test50_50_Partitions2_1"]
LOSS = "loss_funcs/metric_loss/SoftOrthogonalProxyAnchorLoss"
ITERS = "trainer/MetricLossOnly/iterations_per_epoch"
# as a shell splits them (PB's parser wants a space after every colon)
SEARCH = (
    "--loss_funcs~APPLY~3 {so_weight~LOG_BAYESIAN~: [0.01, 100], "
    "margin~BAYESIAN~: [0.0, 0.3]} "
    "--trainer~APPLY~2 {iterations_per_epoch~INT_BAYESIAN~: [1, 2]}"
).split(" ")
RANGES = {
    f"{LOSS}/so_weight": (0.01, 100, True),
    f"{LOSS}/margin": (0.0, 0.3, False),
    ITERS: (1, 2, False),
}
# MPerClassSampler's default draws 100,000 indices per epoch: seconds per fold
FAST = "--sampler~APPLY~2 {length_before_new_iter: 16}".split(" ")


@pytest.fixture(scope="module", autouse=True)
def restore_globals():
    level, optuna_level = logging.getLogger().level, optuna.logging.get_verbosity()
    yield
    logging.getLogger().setLevel(level)
    optuna.logging.set_verbosity(optuna_level)
    compat.uninstall()


def flags(tmp_path, name="e", experiments="experiments"):
    return [
        "--dataset_root", str(tmp_path / "data"),
        "--root_experiment_folder", str(tmp_path / experiments),
        "--experiment_name", name,
    ]  # fmt: skip


##################
### fast tests ###
##################


def names_in(code) -> set:
    names = set(code.co_names) | set(code.co_varnames)
    for const in code.co_consts:
        if hasattr(const, "co_names"):
            names |= names_in(const)
    return names


def test_every_ax_use_is_replaced():
    pb = bayes_opt.import_bayes_opt_runner()
    ax_names = {n for names in bayes_opt.AX_NAMES.values() for n in names}
    ax_names |= {"open_log", "ax_client", "ax_log_folder"}
    uses_ax = {
        name
        for name, func in vars(pb.BayesOptRunner).items()
        if hasattr(func, "__code__") and names_in(func.__code__) & ax_names
    }
    # __init__ only names the ax log folder, which nothing creates any more
    assert uses_ax == set(bayes_opt.REPLACED) | {"__init__"}
    uses_ax.remove("__init__")
    ours = bayes_opt.runner_class()
    assert all(name in vars(ours) for name in uses_ax)
    assert issubclass(ours, pb.BayesOptRunner)
    # the ax names PB imported are placeholders that say what happened
    with pytest.raises(RuntimeError, match="replaces"):
        pb.AxClient()
    with pytest.raises(RuntimeError, match="replaces"):
        pb.TrialStatus.COMPLETED
    # no stand-in module is left behind
    for name in bayes_opt.AX_NAMES:
        assert name not in sys.modules or sys.modules[name].__spec__ is not None


def test_search_space_from_pb_syntax():
    """PB's own parser of the YAML keywords, then our ranges."""
    pb = bayes_opt.import_bayes_opt_runner()
    config = {
        "loss_funcs": {
            "metric_loss": {
                "SoftOrthogonalProxyAnchorLoss": {
                    "so_weight~LOG_BAYESIAN~": [0.01, 100],
                    "margin~BAYESIAN~": [0, 0.3],
                    "alpha": 32,
                }
            }
        },
        "sampler": {"MPerClassSampler": {"m~INT_BAYESIAN~": [2, 8]}},
        "size~LOG_INT_BAYESIAN~": [1, 3],  # not a PB keyword: left alone
    }
    params = []
    pb.set_optimizable_params_and_bounds(config, params, "")
    assert bayes_opt.distributions(params) == {
        f"{LOSS}/so_weight": FloatDistribution(0.01, 100.0, log=True),
        f"{LOSS}/margin": FloatDistribution(0.0, 0.3),
        "sampler/MPerClassSampler/m": IntDistribution(2, 8),
    }
    assert config["loss_funcs"]["metric_loss"]["SoftOrthogonalProxyAnchorLoss"] == {
        "so_weight": [0.01, 100],
        "margin": [0, 0.3],
        "alpha": 32,
    }
    assert bayes_opt.num_init_trials(3) == 6 and bayes_opt.num_init_trials(1) == 5


@pytest.mark.parametrize(
    "key, bounds, message",
    [
        ("w~BAYESIAN~", [1], r"w~BAYESIAN~ \[1\]: write \[low, high\], two numbers"),
        ("w~BAYESIAN~", [2, 1], "low must be below high"),
        ("w~LOG_BAYESIAN~", [0, 1], "a log-scale range must be above 0"),
        ("n~INT_BAYESIAN~", [1.5, 4], "two integers"),
        ("n~INT_BAYESIAN~", [True, 4], "two integers"),
    ],
)
def test_bad_range_is_one_sentence(key, bounds, message):
    pb = bayes_opt.import_bayes_opt_runner()
    params = []
    pb.set_optimizable_params_and_bounds({"loss": {key: bounds}}, params, "")
    with pytest.raises(ValueError, match=message):
        bayes_opt.distributions(params)


def test_no_range_is_one_sentence():
    with pytest.raises(ValueError, match="no ~BAYESIAN~"):
        bayes_opt.distributions([])


def test_sobol_then_gaussian_process(monkeypatch):
    """The first trials are scipy's scrambled Sobol points (mapped to the ranges:
    linear, log, integer), the later ones come from Optuna's GPSampler."""
    from scipy.stats import qmc

    space = {
        "x": FloatDistribution(0.0, 0.5),
        "w": FloatDistribution(0.01, 100.0, log=True),
        "n": IntDistribution(1, 4),
    }
    sampler = bayes_opt.SobolThenGPSampler(space, num_init=4, seed=123)
    gp_calls = []
    real = sampler.gp.sample_relative

    def spy(study, trial, search_space):
        gp_calls.append(trial.number)
        return real(study, trial, search_space)

    monkeypatch.setattr(sampler.gp, "sample_relative", spy)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for _ in range(6):
        trial = study.ask(fixed_distributions=space)
        p = trial.params
        study.tell(trial, -((p["x"] - 0.3) ** 2) - math.log10(p["w"]) ** 2 - p["n"])
    u = qmc.Sobol(3, scramble=True, seed=123).random_base2(3)
    for trial, (a, b, c) in zip(study.trials[:4], u):
        assert trial.params["x"] == pytest.approx(0.5 * a, rel=1e-12)
        log_w = math.log(0.01) + b * (math.log(100) - math.log(0.01))
        assert trial.params["w"] == pytest.approx(math.exp(log_w), rel=1e-9)
        assert trial.params["n"] == min(4, max(1, round(0.5 + 4 * c)))
    assert gp_calls == [4, 5]
    assert [sampler.phase(t) for t in study.trials] == ["Sobol"] * 4 + ["GP"] * 2
    for trial in study.trials[4:]:
        assert 0 <= trial.params["x"] <= 0.5 and 1 <= trial.params["n"] <= 4


@pytest.mark.parametrize(
    "text, expected",
    [
        ("0", [0]),
        ("3", [3]),
        ("2,5", [2, 5]),
        ("x", None),
        ("1,2,3", None),
        ("-1", None),
    ],
)
def test_parse_reproductions(text, expected):
    if expected is None:
        with pytest.raises(ValueError, match="--reproductions"):
            bayes_opt.parse_reproductions(text)
    else:
        assert bayes_opt.parse_reproductions(text) == expected


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--reproductions", "2"], "need --bayes_opt_iters N"),
        (["--bayes_opt_init_trials", "3"], "need --bayes_opt_iters N"),
        (["--bayes_opt_iters", "-1"], "--bayes_opt_iters -1: at least 1"),
        (["--bayes_opt_iters", "3", "--reproductions", "a"], "write a count"),
        (["--bayes_opt_iters", "3", "--bayes_opt_init_trials", "0"], "at least 1"),
        (["--bayes_opt_iters", "3", "--evaluate"], "with --evaluate: a search"),
    ],
)
def test_bad_flags_are_one_sentence(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        runner.main(argv + flags(tmp_path))
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "experiments").exists()


@pytest.mark.slow  # builds PB's runner
def test_search_without_ranges_leaves_no_folder(tmp_path):
    with pytest.raises(ValueError, match="no ~BAYESIAN~"):
        runner.main(
            ["--preset", "cub200", "--preset", "cpu_smoke", "--bayes_opt_iters", "2"]
            + flags(tmp_path)
        )
    assert not (tmp_path / "experiments" / "e").exists()


##################
### end to end ###
##################


def val_row(folder, split="VAL"):
    """The folds' mean (MeanAggregator) row of the trained model."""
    tables = read_tables(folder / "meta_logs" / "saved_csvs")
    rows = tables[f"MeanAggregator_{TESTER}_{split}_vs_self"]
    (row,) = [r for r in rows if r["trained_status"] == "trained"]
    return row


def load_study(folder):
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(
            str(folder / "bayes_opt_optuna_logs" / "study.journal")
        )
    )
    return optuna.load_study(study_name=None, storage=storage)


def flat_configs(folder):
    """{yaml file: its dict} of an experiment's saved configs."""
    out = {}
    for name in sorted(os.listdir(folder / "configs")):
        if name.endswith(".yaml"):
            out[name] = yaml.safe_load((folder / "configs" / name).read_text())
    return out


def find_key(tree, path):
    for key in path.split("/"):
        tree = tree[key]
    return tree


@pytest.mark.slow
def test_cub200_search_interrupted_resumed_and_reproduced(tmp_path, monkeypatch):
    from powerful_benchmarker.api_parsers.base_api_parser import BaseAPIParser

    make_tree("cub200", tmp_path / "data")
    calls, stop = [], {"at": 4}  # trial 0: 2 folds; trial 1: fold 0, then stop
    real_train = BaseAPIParser.train

    def train(self, num_epochs):
        calls.append((self.args.experiment_name, self.curr_split_count))
        if len(calls) == stop["at"]:
            raise KeyboardInterrupt
        return real_train(self, num_epochs)

    monkeypatch.setattr(BaseAPIParser, "train", train)
    argv = (
        ["--preset", "cub200", "--preset", "cpu_smoke"]
        + ["--bayes_opt_iters", "3", "--reproductions", "2"]
        + ["--bayes_opt_init_trials", "2"]  # Sobol for 0 and 1, the GP for 2
        + SEARCH
        + FAST
        + flags(tmp_path)
    )
    with pytest.raises(KeyboardInterrupt):
        runner.main(argv)
    assert calls == [("e0", 0), ("e0", 1), ("e1", 0), ("e1", 1)]
    root = tmp_path / "experiments" / "e"
    states = [t.state for t in load_study(root).trials]
    assert states == [TrialState.COMPLETE, TrialState.RUNNING]
    asked = yaml.safe_load((root / "e1" / "bayes_opt_parameters.yaml").read_text())
    fold0_model = root / "e1" / FOLDS[0] / "saved_models" / "trunk_best1.pth"
    fold0_mtime = fold0_model.stat().st_mtime_ns

    # resume: trial 1's second fold only, trial 2, then the best trial's reproductions
    calls.clear()
    stop["at"] = None
    best_value, best_sem = runner.main(argv)
    study = load_study(root)
    trials = study.trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert trials[1].params == asked and fold0_model.stat().st_mtime_ns == fold0_mtime
    best = max(trials, key=lambda t: (t.value, -t.number))
    best_name = f"e{best.number}"
    reproductions = [f"{best_name}_reproduction{i}" for i in range(2)]
    assert calls == [("e1", 1), ("e2", 0), ("e2", 1)] + [
        (name, fold) for name in reproductions for fold in (0, 1)
    ]

    # each trial: its ranges applied to its configs, objective = the folds' mean
    # validation MAP@R as PB's aggregator recorded it
    table = read_tables(root / "bayes_opt_record_keeper_logs")
    rows = {r["trial_index"]: r for r in table["bayes_opt"]}
    for trial in trials:
        folder = root / f"e{trial.number}"
        configs = flat_configs(folder)
        for name, (low, high, _) in RANGES.items():
            value = trial.params[name]
            assert low <= value <= high
            file = (
                "config_general.yaml"
                if name == ITERS
                else "config_loss_and_miners.yaml"
            )
            assert find_key(configs[file], name) == value
        assert isinstance(trial.params[ITERS], int)
        row = val_row(folder)
        assert trial.value == row["mean_average_precision_at_r_level0"]
        assert trial.user_attrs["SEM"] == row["SEM_mean_average_precision_at_r_level0"]
        record = rows[trial.number]
        assert record["mean_average_precision_at_r"] == trial.value
        assert record["generation_method"] == ("Sobol" if trial.number < 2 else "GP")
    assert (best_value, best_sem) == (best.value, best.user_attrs["SEM"])
    assert yaml.safe_load((root / "best_parameters.yaml").read_text()) == {
        "best_sub_experiment_name": best_name,
        "best_parameters": best.params,
        "best_values": {
            "mean_average_precision_at_r": {
                "mean": best.value,
                "SEM": best.user_attrs["SEM"],
            }
        },
    }

    # reproductions: the best trial's configs, trained; best and reproductions
    # evaluated on test (fold models and their ensemble), then PB's report
    for name in reproductions:
        assert flat_configs(root / name) == flat_configs(root / best_name)
    for kind in ("MeanAggregator", "ConcatenateEmbeddings"):
        test_maps = []
        for name in [best_name] + reproductions:
            tables = read_tables(root / name / "meta_logs" / "saved_csvs")
            (row,) = [
                r
                for r in tables[f"{kind}_{TESTER}_TEST_vs_self"]
                if r["trained_status"] == "trained"
            ]
            test_maps.append(row["mean_average_precision_at_r_level0"])
        report = yaml.safe_load((root / f"report_{kind}_{TESTER}.yaml").read_text())
        summary = report["trained"]["mean_average_precision_at_r_level0"]
        mean = sum(test_maps) / 3
        assert summary["mean"] == pytest.approx(mean, abs=1e-12)
        half_width = 4.302652729911275 * np.std(test_maps, ddof=1) / math.sqrt(3)
        if half_width > 0:  # t(0.975, 2 dof) x standard error
            low, high = summary["95%_confidence_interval"]
            assert (low, high) == pytest.approx((mean - half_width, mean + half_width))
    for name in ("optimization_history.png", "optimization_slice.png"):
        assert (root / name).read_bytes()[:4] == b"\x89PNG"

    # --reproduce_results on a trial folder: a new experiment with its configs
    calls.clear()
    runner.main(
        ["--reproduce_results", str(root / best_name)]
        + flags(tmp_path, "again", "experiments2")
    )
    again = tmp_path / "experiments2" / "again"
    assert calls == [("again", 0), ("again", 1)]
    assert flat_configs(again) == flat_configs(root / best_name)
    assert 0 <= val_row(again)["mean_average_precision_at_r_level0"] <= 1
