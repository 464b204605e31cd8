"""The run folder around the checkpoint: refuse to clobber a run, check a checkpoint
before resuming (its metadata, read without loading its tensors, and the data it was
trained on), remove a run's files for --overwrite, handle Ctrl-C / SIGTERM, and the
files written besides the weights (logs, the skipped-image list, test figures)."""

import contextlib
import logging
import os
import shutil
import signal
import sys
from typing import Any, Dict, List, Optional

from .. import distributed
from . import checkpoints
from .config import SCHEMA, ConfigError, TrainConfig, default_value

LOGGER = logging.getLogger("pml_soproxy")
#: keys that may differ on --resume: where things are, how long to train, how to
#: load and evaluate. Every other key is part of the run (the optimizer state and
#: the RNG streams in the checkpoint follow from it), so --resume refuses a change.
RESUMABLE_KEYS = ("output_dir", "data_root", "epochs", "patience", "num_workers",
                  "eval_batch_size", "log_every", "device", "max_image_pixels",
                  "skip_bad_images", "cache_dir", "figures")  # fmt: skip
#: the trunk's starting weights: replaced by the checkpoint's on --resume
STARTING_KEYS = ("pretrained_weights", "random_init")


def interrupted_message(folder: str) -> str:
    return (
        f"Interrupted. Every completed epoch is checkpointed in {folder}; continue "
        "with the same command plus --resume."
    )


def _differences(saved: Dict[str, Any], config: TrainConfig, keys) -> List[str]:
    """Keys whose value differs; a key the checkpoint predates counts as its default
    then (a run saved before a key existed was trained with that default)."""
    now = config.to_dict()
    saved = {k: saved.get(k, default_value(SCHEMA[k])) for k in keys}
    return [f"{k}: {saved[k]!r} in the checkpoint, {now[k]!r} now" for k in keys
            if saved[k] != now[k]]  # fmt: skip


def check_folder(config: TrainConfig, resume: bool, overwrite: bool) -> Optional[Dict]:
    """Refuse to clobber a run; for ``resume``, the checkpoint's metadata, checked
    against this config and process count before anything is built."""
    folder = config.output_dir
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other: pass one")
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ConfigError(f"output_dir {folder} exists and is not a folder")
    existing = checkpoints.existing_run_files(folder) if os.path.isdir(folder) else []
    if not resume:
        if existing and not overwrite:
            raise ConfigError(
                f"{folder} already holds a run ({', '.join(existing)}): pass --resume "
                "to continue it, --overwrite to replace it, or another --output-dir"
            )
        return None
    path = os.path.join(folder, checkpoints.CHECKPOINT)
    if not os.path.isfile(path):
        old = [n for n in checkpoints.OLD_FILES if n in existing]
        if old:
            raise checkpoints.refuse_pickle(os.path.join(folder, old[0]))
        raise ConfigError(
            f"--resume: there is no {checkpoints.CHECKPOINT} in {folder}; run without "
            "--resume to start a new run there"
        )
    meta = checkpoints.read_meta(path)
    world = distributed.launched_world_size()
    if meta["world_size"] != world:
        raise ConfigError(
            f"--resume: {path} was written by {meta['world_size']} process(es), this "
            f"run has {world}; resume with the same number of processes"
        )
    fixed = [k for k in config.to_dict() if k not in RESUMABLE_KEYS + STARTING_KEYS]
    differ = _differences(meta["config"], config, fixed)
    if differ:
        raise ConfigError(
            f"--resume: {path} belongs to another run; these keys differ and cannot "
            f"change on resume: {'; '.join(differ)} (use the run's values, or start "
            "a new run with another --output-dir or --overwrite)"
        )
    return meta


def check_resumed_data(meta: Dict[str, Any], config: TrainConfig, fingerprint: Dict):
    """Refuse other training data than the checkpoint's; warn about the resumable
    keys that changed (the run will differ from an uninterrupted one)."""
    saved, now = meta["data"], fingerprint
    if saved != now:
        raise ConfigError(
            f"--resume: the training data differ from the checkpoint's "
            f"({saved['num_classes']} classes, {saved['train_images']} images, "
            f"fingerprint {saved['sha256']} then; {now['num_classes']}, "
            f"{now['train_images']}, {now['sha256']} now)"
        )
    changed = _differences(
        meta["config"],
        config,
        [k for k in RESUMABLE_KEYS if k not in ("output_dir", "data_root")],
    )
    if changed:
        LOGGER.warning(
            "resuming with changed keys (the run will differ from an "
            "uninterrupted one): %s", "; ".join(changed)
        )  # fmt: skip


def prepare_folder(folder: str, overwrite: bool):
    """Rank 0, checks done: the folder exists, without the files of a replaced run
    or a killed save."""
    if overwrite:
        remove_run_files(folder)
    os.makedirs(folder, exist_ok=True)
    stale = checkpoints.remove_stale_temporaries(folder)
    if stale:
        LOGGER.warning("removed %d stale temporary file(s) of a run killed "
                       "while saving", len(stale))  # fmt: skip


def nonfinite_message(config: TrainConfig, epoch: int, iteration: int, of: int) -> str:
    """What to do when the training loss became NaN or infinite."""
    c = config
    kept = (
        f"{os.path.join(c.output_dir, checkpoints.CHECKPOINT)} keeps epoch "
        f"{epoch - 1}" if epoch > 1 else "no epoch was completed"
    )  # fmt: skip
    return (
        f"the training loss became NaN or infinite at epoch {epoch}, iteration "
        f"{iteration} of {of}; the run stopped and {kept}. Lower the learning "
        f"rate (lr={c.lr:g}, proxy_lr_multiplier={c.proxy_lr_multiplier:g}) or "
        f"use precision fp32, and start the run again with --overwrite"
    )


def remove_run_files(folder: str):
    """--overwrite: the files a run writes, nothing else."""
    names = checkpoints.existing_run_files(folder) + [
        checkpoints.EVALUATION, checkpoints.SKIPPED_IMAGES]  # fmt: skip
    for name in names:
        if os.path.isfile(os.path.join(folder, name)):
            os.remove(os.path.join(folder, name))
    shutil.rmtree(os.path.join(folder, "logs"), ignore_errors=True)


@contextlib.contextmanager
def interrupt_handling(folder: str):
    """SIGTERM behaves like Ctrl-C. Under torchrun, SIGINT/SIGTERM end each process
    at once (a rank may be blocked in a collective): rank 0 says what to do, the
    others leave silently; a checkpoint being written stays a temporary file."""
    torchrun = distributed.launched_by_torchrun()

    def handler(signum, frame):
        if not torchrun:
            raise KeyboardInterrupt
        if os.environ.get("RANK", "0") == "0":
            print(f"\n{interrupted_message(folder)}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(130)

    signals = (signal.SIGTERM, signal.SIGINT) if torchrun else (signal.SIGTERM,)
    previous = {}
    try:
        for s in signals:
            previous[s] = signal.signal(s, handler)
    except ValueError:  # not the main thread: leave signals alone
        previous = {}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def skipped_images(folder: str) -> List[List[str]]:
    path = os.path.join(folder, checkpoints.SKIPPED_IMAGES)
    if not os.path.isfile(path):
        return []
    from ..datasets import read_skipped

    return [list(item) for item in read_skipped(path)]


def make_record_keeper(folder: str):
    """record-keeper's csv/sqlite logs (PML's get_record_keeper also wants tensorboard)."""
    import record_keeper
    from pytorch_metric_learning.utils import common_functions as c_f

    writer = record_keeper.RecordWriter(folder=folder, is_new_experiment=False)
    return record_keeper.RecordKeeper(
        record_writer=writer,
        attributes_to_search_for=c_f.list_of_recordable_attributes_list_names(),
    )


def write_test_figures(kept: Dict[str, Any], config: TrainConfig) -> List[str]:
    from ..figures import test_split_figures

    folder = os.path.join(config.output_dir, "figures")
    try:
        return test_split_figures(kept, folder, seed=config.seed)
    except Exception as err:  # figures are a courtesy, never a reason to fail
        LOGGER.warning("the test figures could not be drawn (%s: %s)",
                       type(err).__name__, err)  # fmt: skip
        return []
