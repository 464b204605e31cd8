"""--resume reproduces the uninterrupted run bit for bit (CPU), whatever the
interruption: Ctrl-C (SIGINT) after an epoch, or SIGKILL while the next checkpoint
is being written; after epoch 1 or 2; with 0 or 2 loader workers; single-process and
2-process gloo under torchrun."""

import json
import os
import signal

import pytest

from pml_soproxy.training import CHECKPOINT, Run, train
from pml_soproxy.training.checkpoints import TMP_MARK, load_checkpoint

from .helpers import (
    INTERRUPTER,
    SIGKILL_CODES,
    TRAIN_FLAGS,
    config,
    python,
    torchrun,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted runs, per loader-worker count."""
    cache = {}

    def get(workers):
        if workers not in cache:
            folder = tmp_path_factory.mktemp(f"straight{workers}")
            cache[workers] = train(config(folder, num_workers=workers))
        return cache[workers]

    return get


def same_run(resumed, straight):
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3]
    assert resumed["history"] == straight["history"]
    assert resumed["test"] == straight["test"]
    assert resumed["selected"] == straight["selected"]


@pytest.mark.parametrize(
    "signum, workers, after",
    [(signal.SIGINT, 0, 1), (signal.SIGINT, 0, 2), (signal.SIGINT, 2, 1),
     (signal.SIGINT, 2, 2), (signal.SIGTERM, 0, 1)],
)  # fmt: skip
def test_sigint_then_resume_is_the_uninterrupted_run(
    tmp_path, monkeypatch, straight, signum, workers, after
):
    interrupted = config(tmp_path, num_workers=workers)
    original = Run.end_of_epoch

    def ctrl_c_after(self, trainer):
        keep_going = original(self, trainer)
        if trainer.epoch == after:
            os.kill(os.getpid(), signum)  # a real signal, as from a terminal
        return keep_going

    monkeypatch.setattr(Run, "end_of_epoch", ctrl_c_after)
    with pytest.raises(KeyboardInterrupt):
        train(interrupted)
    monkeypatch.setattr(Run, "end_of_epoch", original)
    saved = load_checkpoint(os.path.join(interrupted.output_dir, CHECKPOINT))
    assert saved["meta"]["epoch"] == after
    same_run(train(interrupted, resume=True), straight(workers))


@pytest.mark.parametrize("workers, after", [(0, 1), (2, 2)])
def test_sigkill_while_saving_then_resume_is_the_uninterrupted_run(
    tmp_path, straight, workers, after
):
    out = tmp_path / "killed"
    flags = ["train", *TRAIN_FLAGS, "--num-workers", str(workers), "--output-dir",
             str(out)]  # fmt: skip
    script = tmp_path / "interrupter.py"
    script.write_text(INTERRUPTER)
    killed = python(str(script), "sigkill", str(after), *flags)
    assert killed.returncode in SIGKILL_CODES, killed.stderr[-2000:]
    assert [p for p in os.listdir(out) if TMP_MARK in p]  # the half-written file
    assert load_checkpoint(str(out / CHECKPOINT))["meta"]["epoch"] == after

    resumed = python("-m", "pml_soproxy.cli", *flags, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert not [p for p in os.listdir(out) if TMP_MARK in p]  # stale file removed
    same_run(json.loads((out / "results.json").read_text()), straight(workers))


DDP_FLAGS = ["--val-fraction", "0.2", "--batch-size", "40", "--samples-per-class", "10"]


@pytest.mark.parametrize("how, workers, after", [("sigint", 0, 1), ("sigkill", 2, 2)])
def test_two_process_interrupt_then_resume_is_the_uninterrupted_run(
    tmp_path, how, workers, after
):
    flags = ["train", *TRAIN_FLAGS, *DDP_FLAGS, "--num-workers", str(workers)]
    whole = torchrun("-m", "pml_soproxy.cli", *flags, "--output-dir",
                     str(tmp_path / "whole"), cwd=tmp_path,
                     log_dir=tmp_path / "logs")  # fmt: skip
    assert whole.returncode == 0, whole.stderr[-3000:]
    ranks = {int(p.parent.name): p.read_text() + (p.parent / "stdout.log").read_text()
             for p in (tmp_path / "logs").rglob("stderr.log")}  # fmt: skip
    assert sorted(ranks) == [0, 1]
    assert "epoch 1/3" in ranks[0] and "recall_at_1" in ranks[0]
    assert "epoch 1/3" not in ranks[1] and "recall_at_1" not in ranks[1]
    # the logged loss is the global batch's, not world_size times it
    single = train(config(tmp_path, "single", batch_size=40, samples_per_class=10,
                          val_fraction=0.2, num_workers=workers))  # fmt: skip
    two = json.loads((tmp_path / "whole" / "results.json").read_text())
    ratio = two["history"][0]["loss"] / single["history"][0]["loss"]
    assert 0.75 < ratio < 1.33, ratio

    out = tmp_path / "interrupted"
    script = tmp_path / "interrupter.py"
    script.write_text(INTERRUPTER)
    stopped = torchrun(str(script), how, str(after), *flags, "--output-dir",
                       str(out), cwd=tmp_path)  # fmt: skip
    assert stopped.returncode != 0
    if how == "sigint":
        assert stopped.stderr.count("Interrupted.") == 1  # rank 0 only
        assert "Traceback" not in stopped.stderr.split("Interrupted.")[0]
    assert load_checkpoint(str(out / CHECKPOINT))["meta"]["epoch"] == after

    resumed = torchrun("-m", "pml_soproxy.cli", *flags, "--output-dir", str(out),
                       "--resume", cwd=tmp_path)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    same_run(
        json.loads((out / "results.json").read_text()),
        json.loads((tmp_path / "whole" / "results.json").read_text()),
    )
