"""A run folder is never clobbered; --resume only continues the same run; a
diverging loss stops with its epoch and iteration; evaluate prints before it writes."""

import json
import os

import pytest

from pml_soproxy import cli
from pml_soproxy.training import CHECKPOINT, ConfigError, train
from pml_soproxy.training.checkpoints import load_checkpoint

from .helpers import TRAIN_FLAGS, config


def error_line(capsys):
    """The one error line (progress bars may stand before it on stderr)."""
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in lines if "pml-soproxy: error:" in line]
    assert len(errors) == 1 and lines[-1] == errors[0], lines
    return errors[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    folder = tmp_path_factory.mktemp("finished")
    results = train(config(folder, epochs=2))
    return folder / "run", results


def test_a_finished_run_is_not_overwritten_without_overwrite(finished, capsys):
    out, results = finished
    before = (out / "weights_best.safetensors").read_bytes()
    for epochs in ("2", "-2"):
        assert cli.main(["train", *TRAIN_FLAGS, "--epochs", epochs, "--num-workers",
                         "0", "--output-dir", str(out)]) == 2  # fmt: skip
        line = error_line(capsys)
        assert ("already holds a run" in line) or ("'epochs' = -2" in line)
    assert (out / "weights_best.safetensors").read_bytes() == before
    assert json.loads((out / "results.json").read_text())["test"] == results["test"]


def test_resume_without_a_checkpoint_says_so(tmp_path, capsys):
    args = ["train", *TRAIN_FLAGS, "--output-dir", str(tmp_path / "new"), "--resume"]
    assert cli.main(args) == 2
    assert "there is no checkpoint_latest.pt" in error_line(capsys)


@pytest.mark.parametrize(
    "flags, differs",
    [
        (["--embedding-size", "8"], "embedding_size: 0 in the checkpoint, 8 now"),
        (["--model-name", "deit_small_patch16_224"], "model_name"),
        (["--seed", "3"], "seed: 0 in the checkpoint, 3 now"),
        (["--so-weight", "2"], "so_weight"),
        (["--lr", "0.5"], "lr: 0.001 in the checkpoint, 0.5 now"),
    ],
)
def test_resume_of_another_run_names_the_keys_that_differ(finished, capsys, flags,
                                                          differs):  # fmt: skip
    out, _ = finished
    args = ["train", *TRAIN_FLAGS, "--epochs", "2", "--num-workers", "0",
            "--output-dir", str(out), "--resume", *flags]  # fmt: skip
    assert cli.main(args) == 2
    line = error_line(capsys)
    assert "belongs to another run" in line and differs in line


def test_resume_with_other_data_of_the_same_class_count_is_refused(tmp_path, capsys):
    from tests.datasets.trees import make_class_folders

    tiny = tmp_path / "tiny.yaml"
    tiny.write_text("model_name: deit_tiny_patch16_224\nrandom_init: true\n"
                    "trunk_kwargs: {img_size: 32, patch_size: 8, depth: 1, "
                    "embed_dim: 32, num_heads: 2}\n")  # fmt: skip
    first = make_class_folders(tmp_path / "a", ["ant", "bee", "cat", "dog"], 4)
    other = make_class_folders(tmp_path / "b", ["axe", "bow", "cup", "den"], 4)
    out = tmp_path / "run"
    args = ["train", "--dataset", "folder", "--config", str(tiny), "--epochs", "1",
            "--batch-size", "4", "--samples-per-class", "2", "--val-fraction", "0",
            "--num-workers", "0", "--device", "cpu", "--output-dir", str(out)]  # fmt: skip
    assert cli.main([*args, "--data-root", str(first)]) == 0
    capsys.readouterr()
    assert cli.main([*args, "--data-root", str(other), "--resume"]) == 2
    assert "training data differ" in error_line(capsys)
    # the same data moved elsewhere is the same run
    os.rename(first, tmp_path / "moved")
    assert cli.main([*args, "--data-root", str(tmp_path / "moved"), "--resume"]) == 0


def test_resume_with_another_process_count_is_refused_before_building(
    finished, monkeypatch
):
    out, _ = finished
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(
        "pml_soproxy.training.builder.build_data",
        lambda *_: pytest.fail("the data were built before the check"),
    )
    with pytest.raises(ConfigError, match="1 process.*this run has 2"):
        train(config(out.parent, epochs=2), resume=True)


def test_overwrite_replaces_only_the_run_files(tmp_path):
    c = config(tmp_path, epochs=1)
    train(c)
    mine = tmp_path / "run" / "notes.txt"
    mine.write_text("keep me")
    with pytest.raises(ConfigError, match="already holds a run"):
        train(c)
    results = train(c, overwrite=True)
    assert [h["epoch"] for h in results["history"]] == [1]
    assert mine.read_text() == "keep me"


def test_a_diverging_loss_stops_with_epoch_and_iteration(tmp_path, capsys):
    args = ["train", *TRAIN_FLAGS, "--num-workers", "0", "--output-dir",
            str(tmp_path / "nan"), "--lr", "1e30", "--log-every", "1"]  # fmt: skip
    assert cli.main(args) == 2
    line = error_line(capsys)
    assert "NaN or infinite at epoch 1, iteration" in line and "lr=1e+30" in line


def test_a_diverging_loss_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    from pml_soproxy.losses import SoftOrthogonalProxyAnchorLoss
    from pml_soproxy.training import NonFiniteLossError

    calls = []
    original = SoftOrthogonalProxyAnchorLoss.forward

    def nan_from_epoch_two(self, *args, **kwargs):
        calls.append(1)
        loss = original(self, *args, **kwargs)
        return loss * float("nan") if len(calls) > 2 else loss  # 2 iterations/epoch

    monkeypatch.setattr(SoftOrthogonalProxyAnchorLoss, "forward", nan_from_epoch_two)
    c = config(tmp_path, log_every=5)
    with pytest.raises(
        NonFiniteLossError, match="epoch 2, iteration 1 of 2.*keeps epoch 1"
    ):
        train(c)
    assert load_checkpoint(os.path.join(c.output_dir, CHECKPOINT))["meta"]["epoch"] == 1
    assert not os.path.exists(os.path.join(c.output_dir, "results.json"))


def test_evaluate_prints_its_metrics_before_writing(finished, tmp_path, capsys):
    out, results = finished
    blocked = tmp_path / "a_file"
    blocked.write_text("")
    target = blocked / "evaluation.json"  # its parent is a file: cannot be written
    code = cli.main(["evaluate", "--checkpoint", str(out), "--device", "cpu",
                     "--output", str(target)])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 2
    assert "recall_at_1" in captured.out
    assert f"{100 * results['test']['recall_at_1']:.2f}" in captured.out
    assert "could not be written" in captured.err and "--output" in captured.err
