"""The command line end to end on the embedded digits data."""

import json
import os

import pytest

from pml_soproxy import cli
from pml_soproxy.training import Run, builder, train

from .helpers import TRAIN_FLAGS, config


def test_validation_classes_are_carved_from_training_classes(tmp_path):
    run = Run(config(tmp_path))
    train_classes = set(run.data.train.parent_classes.tolist())
    val_classes = set(run.data.val.parent_classes.tolist())
    assert train_classes.isdisjoint(val_classes)
    assert train_classes | val_classes == set(range(5))  # digits 0-4, never 5-9
    assert run.loss.num_classes == len(train_classes)


def test_selection_uses_validation_and_the_test_split_is_read_once_at_the_end(
    tmp_path, monkeypatch
):
    seen, epochs = [], []
    create, end_of_epoch = builder.create_dataset, Run.end_of_epoch

    def recording(config, split, transform=None):
        seen.append((split, len(epochs)))
        return create(config, split, transform)

    def counting(self, trainer):
        epochs.append(trainer.epoch)
        return end_of_epoch(self, trainer)

    monkeypatch.setattr(builder, "create_dataset", recording)
    monkeypatch.setattr(Run, "end_of_epoch", counting)
    results = train(config(tmp_path))
    assert seen == [("train", 0), ("test", 3)]  # val is carved from train
    validation = [h["precision_at_1"] for h in results["history"]]
    assert results["best_epoch"] == 1 + validation.index(max(validation))
    assert results["selected"].startswith(f"epoch {results['best_epoch']} ")


@pytest.mark.slow
def test_cli_train_evaluate_and_ctrl_c(tmp_path, monkeypatch, capsys):
    out = tmp_path / "cli"
    args = ["train", *TRAIN_FLAGS, "--num-workers", "0", "--output-dir", str(out)]
    assert cli.main(args) == 0
    results = json.loads((out / "results.json").read_text())
    printed = capsys.readouterr().out
    assert "recall_at_1" in printed and "weights of epoch" in printed
    assert "random init" in printed and results["pretrained_weights"] == {
        "kind": "random init",
        "path": None,
    }
    assert set(results["test"]) >= {"recall_at_1", "recall_at_8",
                                    "mean_average_precision_at_r"}  # fmt: skip

    for target in (out, out / "weights_best.safetensors"):
        assert (
            cli.main(["evaluate", "--checkpoint", str(target), "--device", "cpu"]) == 0
        )
        evaluation = json.loads((out / "evaluation.json").read_text())
        assert evaluation["test"] == results["test"]
    assert "recall_at_1" in capsys.readouterr().out

    def interrupt(*_, **__):
        raise KeyboardInterrupt

    monkeypatch.setattr("pml_soproxy.training.train", interrupt)
    assert cli.main([*args, "--overwrite"]) == 130
    err = capsys.readouterr().err
    assert "--resume" in err and "Traceback" not in err


def test_cli_reports_bad_input_in_one_line(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    code = cli.main(["train", "--dataset", "cub200", "--data-root", str(missing),
                     "--device", "cpu", "--random-init"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("pml-soproxy: error:") and str(missing) in err
    assert len(err.strip().splitlines()) == 1
    assert cli.main(["evaluate", "--checkpoint", str(missing / "x.pt")]) == 2


@pytest.mark.slow
def test_demo_with_a_reduced_budget(tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["demo", "--output-dir", str(out), "--epochs", "2",
            "--iterations-per-epoch", "2"]  # fmt: skip
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "proxy_anchor+SO" in printed and "recall_at_8" in printed
    assert "random init" in printed
    for figure in ("recall_per_epoch.png", "proxy_cosines.png"):
        assert (out / figure).stat().st_size > 1000
    demo = json.loads((out / "demo.json").read_text())
    assert set(demo) == {"proxy_anchor", "proxy_anchor+SO"}
    # each run's test figures, and the test split as an image folder
    for run in ("proxy_anchor", "proxy_anchor_SO"):
        for figure in ("retrieval_grid.png", "embedding_map.png"):
            assert (out / run / "figures" / figure).stat().st_size > 1000
    images = sorted(p.parent.name for p in (out / "test_images").glob("*/*.png"))
    assert len(images) == 896 and sorted(set(images)) == list("56789")


def test_inshop_is_tested_query_against_gallery(tmp_path, capsys):
    from tests.datasets.trees import make_inshop

    root = make_inshop(tmp_path)
    tiny = tmp_path / "tiny.yaml"
    tiny.write_text(
        "model_name: deit_tiny_patch16_224\nrandom_init: true\n"
        "trunk_kwargs: {img_size: 32, patch_size: 8, depth: 1, embed_dim: 32, num_heads: 2}\n"
    )
    out = tmp_path / "inshop"
    args = ["train", "--dataset", "inshop", "--data-root", str(root), "--config", str(tiny),
            "--output-dir", str(out), "--epochs", "1", "--batch-size", "4",
            "--samples-per-class", "2", "--val-fraction", "0", "--num-workers", "0",
            "--device", "cpu"]  # fmt: skip
    assert cli.main(args) == 0
    results = json.loads((out / "results.json").read_text())
    # 2 queries, each with its item in the 4-image gallery: R@40 covers the gallery
    assert results["test"]["recall_at_40"] == 1.0
    assert set(results["test"]) >= {"recall_at_1", "recall_at_10", "recall_at_20",
                                    "recall_at_30"}  # fmt: skip
    assert results["selected"] == "last epoch"
    # the figures of a query-vs-gallery test split
    assert sorted(os.path.basename(p) for p in results["figures"]) == [
        "embedding_map.png", "retrieval_grid.png"]  # fmt: skip
