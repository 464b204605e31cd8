"""The native recipe and the command line, end to end on the embedded digits data."""

import json
import os

import pytest
import torch

from pml_soproxy import cli
from pml_soproxy.training import CHECKPOINT, Run, load_config, train

FAST = dict(epochs=3, iterations_per_epoch=3, num_workers=0, device="cpu")


def config(tmp_path, name="run", **overrides):
    values = dict(FAST, output_dir=str(tmp_path / name))
    values.update(overrides)
    return load_config("digits", values)


def test_config_layers_defaults_dataset_file_and_overrides(tmp_path):
    c = config(tmp_path, so_weight=0.25)
    assert c.model_name == "deit_tiny_patch16_224"  # from digits.yaml
    assert c.margin == 0.1  # from default.yaml
    assert c.so_weight == 0.25  # override
    with pytest.raises(ValueError, match="unknown config keys"):
        load_config("digits", {"so_wieght": 1})
    with pytest.raises(ValueError, match="multiple of samples_per_class"):
        load_config("digits", {"batch_size": 50, "samples_per_class": 20})


def test_validation_classes_are_carved_from_training_classes(tmp_path):
    run = Run(config(tmp_path))
    train_classes = set(run.train_set.parent_classes.tolist())
    val_classes = set(run.val_set.parent_classes.tolist())
    assert train_classes.isdisjoint(val_classes)
    assert train_classes | val_classes == set(range(5))  # digits 0-4, never 5-9
    assert run.loss.num_classes == len(train_classes)


@pytest.mark.slow
def test_interrupt_and_resume_gives_the_uninterrupted_result(tmp_path, monkeypatch):
    straight = train(config(tmp_path, "straight"))

    interrupted = config(tmp_path, "interrupted")
    original = Run.end_of_epoch

    def stop_after_epoch_two(self, trainer):
        keep_going = original(self, trainer)
        if trainer.epoch == 2:
            raise KeyboardInterrupt
        return keep_going

    monkeypatch.setattr(Run, "end_of_epoch", stop_after_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        train(interrupted)
    monkeypatch.setattr(Run, "end_of_epoch", original)
    assert (
        torch.load(
            os.path.join(interrupted.output_dir, CHECKPOINT), weights_only=False
        )["epoch"]
        == 2
    )

    resumed = train(interrupted, resume=True)
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3]
    assert resumed["history"] == straight["history"]
    assert resumed["test"] == straight["test"]


@pytest.mark.slow
def test_cli_train_evaluate_and_ctrl_c(tmp_path, monkeypatch, capsys):
    out = tmp_path / "cli"
    args = ["train", "--dataset", "digits", "--output-dir", str(out), "--epochs", "2",
            "--iterations-per-epoch", "2", "--num-workers", "0", "--device", "cpu"]  # fmt: skip
    assert cli.main(args) == 0
    results = json.loads((out / "results.json").read_text())
    printed = capsys.readouterr().out
    assert "recall_at_1" in printed and "weights of epoch" in printed
    assert set(results["test"]) >= {
        "recall_at_1",
        "recall_at_8",
        "mean_average_precision_at_r",
    }

    assert (
        cli.main(
            [
                "evaluate",
                "--checkpoint",
                str(out / "weights_best.pth"),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["test"] == results["test"]

    def interrupt(*_, **__):
        raise KeyboardInterrupt

    monkeypatch.setattr("pml_soproxy.training.train", interrupt)
    assert cli.main(args) == 130
    assert "--resume" in capsys.readouterr().err


def test_cli_reports_bad_input_in_one_line(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    code = cli.main(
        ["train", "--dataset", "cub200", "--data-root", str(missing), "--device", "cpu"]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("pml-soproxy: error:") and str(missing) in err
    assert cli.main(["evaluate", "--checkpoint", str(missing / "x.pth")]) == 2


@pytest.mark.slow
def test_demo_with_a_reduced_budget(tmp_path, capsys):
    out = tmp_path / "demo"
    args = [
        "demo",
        "--output-dir",
        str(out),
        "--epochs",
        "2",
        "--iterations-per-epoch",
        "2",
    ]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "proxy_anchor+SO" in printed and "recall_at_8" in printed
    for figure in ("recall_per_epoch.png", "proxy_cosines.png"):
        assert (out / figure).stat().st_size > 1000
    demo = json.loads((out / "demo.json").read_text())
    assert set(demo) == {"proxy_anchor", "proxy_anchor+SO"}


def test_inshop_is_tested_query_against_gallery(tmp_path, capsys):
    from tests.datasets.trees import make_inshop

    root = make_inshop(tmp_path)
    tiny = tmp_path / "tiny.yaml"
    tiny.write_text(
        "model_name: deit_tiny_patch16_224\n"
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
    assert set(results["test"]) >= {
        "recall_at_1",
        "recall_at_10",
        "recall_at_20",
        "recall_at_30",
    }
    assert results["selected"] == "last epoch"
