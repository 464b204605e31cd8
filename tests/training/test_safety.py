"""Nothing a user hands pml-soproxy is unpickled: a crafted payload that would write
a marker file is fed to every door that reads weights; the marker never appears."""

import os

import pytest
import torch

from pml_soproxy import cli
from pml_soproxy.training.checkpoints import (
    atomic_write,
    load_checkpoint,
    rng_state,
    set_rng_state,
)
from pml_soproxy.trunks import deit_trunk

from .helpers import TRAIN_FLAGS


class Payload:
    """Unpickling this runs code: it writes ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def crafted(path, marker, like_a_run=True):
    obj = {"trunk": Payload(marker)}
    if like_a_run:  # the layout of pml-soproxy < 0.2 files and of ours
        obj.update(format="pml-soproxy-run", version=2, meta="{}", config={})
    torch.save(obj, path)
    return path


def one_error_line(capsys):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("pml-soproxy: error:"), err
    return lines[0]


@pytest.mark.parametrize("name", ["checkpoint_latest.pt", "weights_best.pth", "x.pt"])
def test_evaluate_never_unpickles(tmp_path, capsys, name):
    marker = tmp_path / "marker"
    path = crafted(tmp_path / name, marker)
    for target in (path, tmp_path):  # the file, and its folder as a run folder
        assert cli.main(["evaluate", "--checkpoint", str(target)]) == 2
        line = one_error_line(capsys)
        assert any(
            s in line for s in ("never loads", "not a pml-soproxy run", "holds no")
        )
    assert not marker.exists()


def test_resume_never_unpickles(tmp_path, capsys):
    marker = tmp_path / "marker"
    out = tmp_path / "run"
    out.mkdir()
    crafted(out / "checkpoint_latest.pt", marker)
    args = ["train", *TRAIN_FLAGS, "--output-dir", str(out), "--resume"]
    assert cli.main(args) == 2
    assert "pickled Python objects" in one_error_line(capsys)
    assert not marker.exists()


def test_old_pickle_format_is_refused_with_what_to_do(tmp_path, capsys):
    marker = tmp_path / "marker"
    out = tmp_path / "old_run"
    out.mkdir()
    crafted(out / "checkpoint_latest.pth", marker, like_a_run=False)
    assert cli.main(["train", *TRAIN_FLAGS, "--output-dir", str(out), "--resume"]) == 2
    line = one_error_line(capsys)
    assert "< 0.2" in line and "train the run again" in line
    assert cli.main(["train", *TRAIN_FLAGS, "--output-dir", str(out)]) == 2
    assert "--overwrite" in one_error_line(capsys)  # an old run is a run
    assert not marker.exists()


def test_pretrained_weights_path_never_unpickles(tmp_path, capsys):
    marker = tmp_path / "marker"
    path = crafted(tmp_path / "deit.pth", marker, like_a_run=False)
    with pytest.raises(RuntimeError, match="deit.pth"):
        deit_trunk("deit_tiny_patch16_224", checkpoint_path=path, img_size=32,
                   patch_size=8, depth=1, embed_dim=32, num_heads=2)  # fmt: skip
    args = ["train", *TRAIN_FLAGS, "--output-dir", str(tmp_path / "r"),
            "--no-random-init", "--pretrained-weights", str(path)]  # fmt: skip
    assert cli.main(args) == 2
    assert str(path) in one_error_line(capsys)
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"hello, not a checkpoint\n", b"PK\x03\x04"])
def test_empty_text_and_truncated_files_are_one_sentence(tmp_path, capsys, content):
    for name in ("weights_best.safetensors", "checkpoint_latest.pt"):
        path = tmp_path / name
        path.write_bytes(content)
        assert cli.main(["evaluate", "--checkpoint", str(path)]) == 2
        assert str(path) in one_error_line(capsys)


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "f"
    path.write_text("old")

    def failing(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(str(path), failing)
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["f"]


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    import random

    import numpy as np
    from pytorch_metric_learning.utils import common_functions as c_f

    state = rng_state()
    expected = (random.random(), np.random.rand(), c_f.NUMPY_RANDOM.rand(),
                torch.rand(1).item())  # fmt: skip
    torch.save({"format": "pml-soproxy-run", "version": 2, "meta": "{}",
                "rng": state}, tmp_path / "c.pt")  # fmt: skip
    set_rng_state(load_checkpoint(str(tmp_path / "c.pt"))["rng"])
    again = (random.random(), np.random.rand(), c_f.NUMPY_RANDOM.rand(),
             torch.rand(1).item())  # fmt: skip
    assert again == expected
