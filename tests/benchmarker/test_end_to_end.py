"""End to end through the real powerful-benchmarker code, on CPU: a generated tree
in each dataset's official layout, ``--preset <dataset> --preset cpu_smoke`` (tiny
DeiT at 32 px, 2 class-disjoint folds, one epoch of 2 iterations), then
``--evaluate`` on test; for CUB also ``--evaluate_ensemble``, a resume and the
``pml-soproxy benchmark`` subcommand, with the trunk's weights from a local file."""

import logging
import math

import pytest

from .helpers import make_tree, read_tables, require_benchmarker

require_benchmarker()

import timm  # noqa: E402
import torch  # noqa: E402

from pml_soproxy import RECALL_AT_K, cli  # noqa: E402
from pml_soproxy.benchmarker import compat, runner  # noqa: E402

pytestmark = pytest.mark.slow

TESTER = "accuracies_normalized_GlobalEmbeddingSpaceTester_level_0"
FOLDS = ["Test50_50_Partitions2_0", "Test50_50_Partitions2_1"]
INSHOP_FOLDS = ["InShopQueryGallery_Partitions2_0", "InShopQueryGallery_Partitions2_1"]


@pytest.fixture(scope="module", autouse=True)
def restore_globals():
    level = logging.getLogger().level
    yield
    logging.getLogger().setLevel(level)
    compat.uninstall()


def common_flags(tmp_path):
    return [
        "--dataset_root", str(tmp_path / "data"),
        "--root_experiment_folder", str(tmp_path / "experiments"),
        "--experiment_name", "e",
    ]  # fmt: skip


def metric_names(dataset):
    return {f"recall_at_{k}_level0" for k in RECALL_AT_K[dataset]} | {
        "mean_average_precision_at_r_level0",
        "r_precision_level0",
        "precision_at_1_level0",
    }


def assert_accuracies(row, dataset):
    for name in metric_names(dataset):
        assert 0 <= row[name] <= 1 and not math.isnan(row[name]), (name, row)


def check_experiment(tmp_path, dataset, split):
    """Per-fold and aggregated (MeanAggregator) records of ``split``."""
    folder = tmp_path / "experiments" / "e"
    vs = {"val": "VAL_vs_self", "test": "TEST_vs_self"}[split]
    if dataset == "inshop" and split == "test":
        vs = "TEST_vs_GALLERY"
    for fold in INSHOP_FOLDS if dataset == "inshop" else FOLDS:
        rows = read_tables(folder / fold / "saved_csvs")[f"{TESTER}_{vs}"]
        assert rows[-1]["epoch"] == 1  # the trained model, selected on val
        assert_accuracies(rows[-1], dataset)
    meta = read_tables(folder / "meta_logs" / "saved_csvs")
    (row,) = meta[f"MeanAggregator_{TESTER}_{vs}"]
    assert row["trained_status"] == "trained"
    assert_accuracies(row, dataset)
    assert "SEM_mean_average_precision_at_r_level0" in row
    return meta


def test_cub200_train_evaluate_ensemble_resume(tmp_path):
    make_tree("cub200", tmp_path / "data")
    checkpoint = tmp_path / "deit_tiny.pth"
    tiny = timm.create_model(
        "deit_tiny_patch16_224",
        img_size=32,
        patch_size=8,
        depth=1,
        embed_dim=32,
        num_heads=2,
    )
    torch.save(tiny.state_dict(), checkpoint)
    # as a shell splits it (PB's parser wants a space after every colon)
    trunk = (
        f"{{trunk: {{DeiTTrunk: {{pretrained: true, checkpoint_path: {checkpoint}}}}}}}"
    )

    mean, sem = runner.main(
        ["--preset", "cub200", "--preset", "cpu_smoke", "--models"]
        + trunk.split(" ")
        + common_flags(tmp_path)
    )
    assert 0 <= mean <= 1 and sem >= 0  # the folds' mean validation MAP@R
    check_experiment(tmp_path, "cub200", "val")
    saved = (
        tmp_path / "experiments" / "e" / "configs" / "config_models.yaml"
    ).read_text()
    assert str(checkpoint) in saved

    # the CLI subcommand, evaluation only: the best model of each fold on test
    assert (
        cli.main(
            ["benchmark", "--evaluate", "--splits_to_eval", "[test]"]
            + common_flags(tmp_path)
        )
        == 0
    )
    check_experiment(tmp_path, "cub200", "test")

    runner.main(
        ["--evaluate_ensemble", "--splits_to_eval", "[test]"] + common_flags(tmp_path)
    )
    meta = read_tables(tmp_path / "experiments" / "e" / "meta_logs" / "saved_csvs")
    (row,) = meta[f"ConcatenateEmbeddings_{TESTER}_TEST_vs_self"]
    assert row["trained_status"] == "trained" and row["epoch"] == "trained"
    assert_accuracies(row, "cub200")

    # resume: one more epoch per fold, the config change kept as a diff
    runner.main(
        [
            "--resume_training",
            "latest",
            "--num_epochs_train",
            "2",
            "--merge_argparse_when_resuming",
        ]
        + common_flags(tmp_path)
    )
    folder = tmp_path / "experiments" / "e"
    for fold in FOLDS:
        rows = read_tables(folder / fold / "saved_csvs")[f"{TESTER}_VAL_vs_self"]
        assert [r["epoch"] for r in rows] == [1, 2]
        assert (folder / fold / "saved_models" / "trunk_2.pth").is_file()
    assert (
        folder / "configs" / "resume_training_config_diffs_1_1" / "config_general.yaml"
    ).is_file()


@pytest.mark.parametrize("dataset", ["cars196", "sop", "inshop"])
def test_train_and_evaluate(dataset, tmp_path):
    make_tree(dataset, tmp_path / "data")
    runner.main(["--preset", dataset, "--preset", "cpu_smoke"] + common_flags(tmp_path))
    check_experiment(tmp_path, dataset, "val")
    runner.main(["--evaluate", "--splits_to_eval", "[test]"] + common_flags(tmp_path))
    check_experiment(tmp_path, dataset, "test")


#: every loss preset ("baseline" is proxy_anchor under its old name) and the shape
#: of the class weights its PML class keeps, for 2 training classes and 16-d
LOSS_WEIGHTS = {
    "proxy_anchor": ("proxies", (2, 16)),
    "proxy_nca": ("proxies", (2, 16)),
    "normalized_softmax": ("W", (16, 2)),
    "soft_triple": ("fc", (16, 2 * 10)),
    "arcface": ("W", (16, 2)),
    "cosface": ("W", (16, 2)),
}


@pytest.mark.parametrize("so", [False, True])
@pytest.mark.parametrize("loss", sorted(LOSS_WEIGHTS))
def test_every_loss_with_and_without_so(loss, so, tmp_path):
    """One fold, two iterations per loss preset, the presets given in another order
    than dataset first; the class weights are optimised at the proxies' 100x lr."""
    if not (tmp_path / "data").exists():
        make_tree("cub200", tmp_path / "data")
    preset = f"so_{loss}" if so else loss
    mean = runner.main(  # one fold: PB returns its value, no standard error
        ["--preset", preset, "--preset", "cpu_smoke", "--preset", "cub200",
         "--split_manager~APPLY~2", "{num_training_sets:", "1}"]
        + common_flags(tmp_path)
    )  # fmt: skip
    assert 0 <= mean <= 1
    folder = tmp_path / "experiments" / "e"
    saved = (folder / "configs" / "config_loss_and_miners.yaml").read_text()
    assert ("SoftOrthogonalityRegularizer" in saved or "so_weight" in saved) == so
    models = folder / FOLDS[0] / "saved_models"
    name, shape = LOSS_WEIGHTS[loss]
    weights = torch.load(models / "metric_loss_1.pth", weights_only=True)
    assert tuple(weights[name].shape) == shape
    optimizer = torch.load(models / "metric_loss_optimizer_1.pth", weights_only=True)
    assert optimizer["param_groups"][0]["lr"] == pytest.approx(0.01)
    (state,) = optimizer["state"].values()  # one parameter, stepped
    assert state["step"] == 2 and torch.count_nonzero(state["exp_avg"]) > 0
