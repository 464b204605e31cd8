"""Images and starting weights as a user hands them to `pml-soproxy train`."""

import json

import pytest

from pml_soproxy import cli

TINY = {"img_size": 32, "patch_size": 8, "depth": 1, "embed_dim": 32, "num_heads": 2}


def tiny_config(tmp_path, random_init=True):
    path = tmp_path / "tiny.yaml"
    path.write_text(
        f"model_name: deit_tiny_patch16_224\nrandom_init: {str(random_init).lower()}\n"
        f"trunk_kwargs: {json.dumps(TINY)}\n"
    )
    return path


def folder_args(tmp_path, root, out, *extra):
    return ["train", "--dataset", "folder", "--data-root", str(root), "--config",
            str(tiny_config(tmp_path)), "--epochs", "1", "--batch-size", "4",
            "--samples-per-class", "2", "--val-fraction", "0", "--device", "cpu",
            "--output-dir", str(out), *extra]  # fmt: skip


@pytest.fixture
def tree_with_a_truncated_jpeg(tmp_path):
    from tests.datasets.trees import make_class_folders

    root = make_class_folders(tmp_path / "imgs", ["ant", "bee", "cat", "dog"], 4)
    bad = root / "ant" / "img_1.jpg"
    bad.write_bytes(bad.read_bytes()[:40])
    return root, bad


def test_a_corrupt_image_in_a_loader_worker_is_one_line(
    tmp_path, capsys, tree_with_a_truncated_jpeg
):
    root, bad = tree_with_a_truncated_jpeg
    args = folder_args(tmp_path, root, tmp_path / "run", "--num-workers", "2",
                       "--iterations-per-epoch", "6")  # fmt: skip
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if "pml-soproxy: error:" in line]
    assert len(errors) == 1 and errors[0] == err[-1] and str(bad) in errors[0]
    assert "Traceback" not in "\n".join(err) and "--skip-bad-images" in errors[0]


def test_skip_bad_images_lists_what_it_skipped(
    tmp_path, capsys, tree_with_a_truncated_jpeg
):
    root, bad = tree_with_a_truncated_jpeg
    out = tmp_path / "run"
    args = folder_args(tmp_path, root, out, "--num-workers", "2",
                       "--iterations-per-epoch", "6", "--skip-bad-images")  # fmt: skip
    assert cli.main(args) == 0
    skipped = json.loads((out / "results.json").read_text())["skipped_images"]
    assert [path for path, _ in skipped] == [str(bad)]
    assert str(bad) in (out / "skipped_images.tsv").read_text()


def test_pretrained_by_default_offline_names_the_two_choices(tmp_path, monkeypatch,
                                                             capsys):  # fmt: skip
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_cache"))
    out = tmp_path / "run"
    code = cli.main(["train", "--dataset", "digits", "--no-random-init", "--output-dir",
                     str(out)])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "--pretrained-weights FILE" in err and "--random-init" in err
    assert len(err.splitlines()) == 1 and not out.exists()


def test_results_record_the_starting_weights(tmp_path):
    from safetensors.torch import save_file

    from pml_soproxy.trunks import create_trunk

    weights = tmp_path / "tiny_deit.safetensors"
    trunk = create_trunk("deit_tiny_patch16_224", pretrained=False, **TINY)
    save_file({k: v.contiguous() for k, v in trunk.model.state_dict().items()},
              str(weights))  # fmt: skip
    out = tmp_path / "run"
    args = ["train", "--dataset", "digits", "--config", str(tiny_config(tmp_path)),
            "--no-random-init", "--pretrained-weights", str(weights), "--epochs", "1",
            "--iterations-per-epoch", "1", "--device", "cpu", "--output-dir",
            str(out)]  # fmt: skip
    assert cli.main(args) == 0
    recorded = json.loads((out / "results.json").read_text())["pretrained_weights"]
    assert recorded["kind"] == "file" and recorded["path"] == str(weights)
    assert len(recorded["sha256"]) == 64
    weights.unlink()  # evaluation needs the run's weights, not the starting ones
    assert cli.main(["evaluate", "--checkpoint", str(out), "--device", "cpu"]) == 0
