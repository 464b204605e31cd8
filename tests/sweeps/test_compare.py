"""compare's numbers against a plain recomputation (statistics module, the t
formula by hand, Student's t with 2 degrees of freedom in closed form), on run
folders written here with known metrics."""

import json
import math
import os
import statistics

import numpy as np
import pytest

from pml_soproxy import cli
from pml_soproxy.sweeps import compare as comparing
from pml_soproxy.sweeps.plan import run_folder
from pml_soproxy.sweeps.runner import prepare_plan
from pml_soproxy.sweeps.spec import build_spec
from pml_soproxy.training.config import ConfigError

from .helpers import FIXED, THIRD_AXIS, THIRD_KEY, THIRD_VALUES

TEST_METRICS = ("recall_at_1", "recall_at_2", "precision_at_1",
                "mean_average_precision_at_r")  # fmt: skip
LAMBDAS, SEEDS = (0.0, 0.5, 1.0), (0, 1, 2)
#: the λ whose validation precision_at_1 is highest, per value of the third axis
BEST_ON_VAL = {THIRD_VALUES[0]: 0.5, THIRD_VALUES[1]: 0.0}


def fake_results(run, rng):
    """results.json of a finished run: random test metrics, a 2-epoch history whose
    best epoch (by validation precision_at_1) is 2."""
    config = dict(run["config"])
    values = run["values"]
    bonus = 0.2 if values["so_weight"] == BEST_ON_VAL[values[THIRD_KEY]] else 0.0
    val = {m: float(rng.uniform(0.1, 0.3)) + bonus for m in TEST_METRICS}
    history = [
        dict({m: v - 0.05 for m, v in val.items()}, epoch=1, loss=3.0,
             proxy_mean_abs_cos=0.3, proxy_max_abs_cos=0.5),
        dict(val, epoch=2, loss=2.0, proxy_mean_abs_cos=0.2, proxy_max_abs_cos=0.4),
    ]  # fmt: skip
    return {
        "config": config,
        "test": {m: float(rng.uniform(0.4, 0.9)) for m in TEST_METRICS},
        "best_epoch": 2,
        "selected": "epoch 2 (best validation precision_at_1)",
        "history": history,
        "proxy_cosines_final": {"mean_abs_cos": float(rng.uniform(0, 0.2))},
    }


@pytest.fixture
def sweep(tmp_path):
    folder = str(tmp_path / "sweep")
    spec = build_spec(dataset="digits", overrides=FIXED,
                      grid=["so_weight=0,0.5,1", "seed=0,1,2", THIRD_AXIS])  # fmt: skip
    plan = prepare_plan(folder, spec, [].append)
    rng = np.random.default_rng(0)
    results = {}
    for run in plan["runs"]:
        os.makedirs(run_folder(folder, run))
        results[run["name"]] = fake_results(run, rng)
        with open(os.path.join(run_folder(folder, run), "results.json"), "w") as f:
            json.dump(results[run["name"]], f)
    return folder, plan, results


def name(so_weight, seed, third):
    return (f"so_weight={comparing.format_value(so_weight)},seed={seed},"
            f"{THIRD_KEY}={third}")  # fmt: skip


def two_sided_p_df2(t):
    """Student's t with 2 degrees of freedom: P(|T| > |t|) = 1 - |t| / sqrt(t^2 + 2)."""
    return 1 - abs(t) / math.sqrt(t * t + 2)


def test_means_stds_paired_t_and_selection_match_a_plain_recomputation(sweep):
    folder, plan, results = sweep
    comparison = comparing.compare_sweep(folder)
    assert comparison["axis"] == "so_weight" and comparison["baseline"] == 0.0
    assert comparison["pair_by"] == "seed" and comparison["missing_runs"] == []
    groups = {g["values"][THIRD_KEY]: g for g in comparison["groups"]}
    assert set(groups) == set(THIRD_VALUES)
    checked = 0
    for third, group in groups.items():
        assert group["selected"] == BEST_ON_VAL[third]
        for lam in LAMBDAS:
            level = comparing.format_value(lam)
            for metric in TEST_METRICS:
                for split in ("test", "val"):
                    xs = [
                        results[name(lam, s, third)]["test"][metric] if split == "test"
                        else results[name(lam, s, third)]["history"][1][metric]
                        for s in SEEDS
                    ]  # fmt: skip
                    got = group["stats"][level][f"{split}/{metric}"]
                    assert got["n"] == 3
                    assert got["mean"] == pytest.approx(statistics.mean(xs), abs=1e-12)
                    assert got["std"] == pytest.approx(statistics.stdev(xs), abs=1e-12)
                    if lam == 0.0:
                        continue
                    base = [
                        results[name(0.0, s, third)]["test"][metric] if split == "test"
                        else results[name(0.0, s, third)]["history"][1][metric]
                        for s in SEEDS
                    ]  # fmt: skip
                    d = [x - b for x, b in zip(xs, base)]
                    t = statistics.mean(d) / (statistics.stdev(d) / math.sqrt(len(d)))
                    paired = group["paired"][level][f"{split}/{metric}"]
                    assert paired["n"] == 3
                    assert paired["mean"] == pytest.approx(
                        statistics.mean(d), abs=1e-12
                    )
                    assert paired["t"] == pytest.approx(t, rel=1e-9)
                    assert paired["p"] == pytest.approx(two_sided_p_df2(t), rel=1e-6)
                    checked += 1
        cos = [results[name(1.0, s, third)]["proxy_cosines_final"]["mean_abs_cos"]
               for s in SEEDS]  # fmt: skip
        assert group["stats"]["1"]["proxies/mean_abs_cos"]["mean"] == pytest.approx(
            statistics.mean(cos))  # fmt: skip
        assert group["stats"]["1"]["selected_epoch"]["mean"] == 2.0
    assert checked == 2 * 2 * len(TEST_METRICS) * 2


def test_unfinished_runs_are_left_out_and_pairs_shrink(sweep):
    folder, plan, results = sweep
    gone = name(1.0, 2, THIRD_VALUES[0])
    os.remove(os.path.join(folder, "runs", gone, "results.json"))
    comparison = comparing.compare_sweep(folder)
    assert comparison["missing_runs"] == [gone]
    group = next(g for g in comparison["groups"]
                 if g["values"][THIRD_KEY] == THIRD_VALUES[0])  # fmt: skip
    assert group["paired"]["1"]["pairs"] == [0, 1]
    d = [results[name(1.0, s, THIRD_VALUES[0])]["test"]["recall_at_1"]
         - results[name(0.0, s, THIRD_VALUES[0])]["test"]["recall_at_1"]
         for s in (0, 1)]  # fmt: skip
    paired = group["paired"]["1"]["test/recall_at_1"]
    assert paired["n"] == 2 and paired["mean"] == pytest.approx(statistics.mean(d))
    assert group["stats"]["1"]["test/recall_at_1"]["n"] == 2
    assert "Not finished (left out): " + gone in comparing.format_comparison(comparison)


def test_another_axis_and_baseline(sweep):
    folder, plan, results = sweep
    comparison = comparing.compare_sweep(folder, axis=THIRD_KEY,
                                         baseline=THIRD_VALUES[1])  # fmt: skip
    assert comparison["baseline"] == THIRD_VALUES[1]
    assert len(comparison["groups"]) == 3  # one per so_weight
    for bad, match in ((dict(axis="margin"), "not an axis"),
                       (dict(baseline=7), "not a value of so_weight"),
                       (dict(metric="recall_at_99"), "not a metric of the runs")):  # fmt: skip
        with pytest.raises(ConfigError, match=match):
            comparing.compare_sweep(folder, **bad)


def test_cli_compare_prints_and_writes_the_table_and_figure(sweep, capsys):
    folder, plan, results = sweep
    assert cli.main(["compare", folder]) == 0
    out = capsys.readouterr().out
    assert "| test/recall_at_1 |" in out and "so_weight=0.5 - so_weight=0" in out
    assert "Validation selects **so_weight=0.5**" in out
    written = json.loads(open(os.path.join(folder, comparing.COMPARE_JSON)).read())
    assert written["groups"][0]["stats"]["0"]["test/recall_at_1"]["n"] == 3
    text = open(os.path.join(folder, comparing.COMPARE_TEXT)).read()
    assert text.strip() == out.split("written:")[0].strip()
    with open(os.path.join(folder, comparing.COMPARE_FIGURE), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_compare_needs_finished_runs(tmp_path):
    folder = str(tmp_path)
    prepare_plan(folder, build_spec(dataset="digits", overrides=FIXED,
                                    grid=["so_weight=0,1"]), [].append)  # fmt: skip
    with pytest.raises(ConfigError, match="no run of the sweep.*has finished"):
        comparing.compare_sweep(folder)


def test_paired_t_edge_cases():
    one = comparing.paired_t([0.5], [0.4])
    assert one["n"] == 1 and one["t"] is None and one["std"] is None
    same = comparing.paired_t([0.5, 0.6], [0.5, 0.6])
    assert same["mean"] == 0 and same["t"] is None  # 0/0
