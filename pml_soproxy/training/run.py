"""The run: check the folder and the resume state, build, train with selection on
the validation classes, test the selected weights once, write ``results.json``.

Every check that can fail runs before the model is built: the config (config.py),
the run folder and the checkpoint's metadata (read without loading its tensors), the
data (parsed, and big enough for one batch) and the pretrained weights (found).
"""

import contextlib
import logging
import os
import shutil
import signal
import sys
import time
from typing import Any, Dict, List, Optional, Union

import torch

from .. import __version__, distributed
from ..device import resolve_device
from ..report import proxy_cosine_stats
from . import builder, checkpoints
from .config import ConfigError, ResolvedConfig, TrainConfig
from .selection import Selection
from .trainer import SOProxyTrainer

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
    from .config import SCHEMA, default_value

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


class Run:
    """One training run, built from a checked config."""

    def __init__(self, config: TrainConfig, resume: bool = False,
                 overwrite: bool = False):  # fmt: skip
        self.config = config
        self.meta = check_folder(config, resume, overwrite)
        self.data = builder.build_data(config)
        self.world_size = distributed.launched_world_size()
        builder.check_data_fits(config, self.data, self.world_size)
        self.fingerprint = self.data.fingerprint()  # saved with every checkpoint
        if self.meta is not None:
            saved, now = self.meta["data"], self.fingerprint
            if saved != now:
                raise ConfigError(
                    f"--resume: the training data differ from the checkpoint's "
                    f"({saved['num_classes']} classes, {saved['train_images']} images, "
                    f"fingerprint {saved['sha256']} then; {now['num_classes']}, "
                    f"{now['train_images']}, {now['sha256']} now)"
                )
            changed = _differences(
                self.meta["config"],
                config,
                [k for k in RESUMABLE_KEYS if k not in ("output_dir", "data_root")],
            )
            if changed:
                LOGGER.warning(
                    "resuming with changed keys (the run will differ from an "
                    "uninterrupted one): %s", "; ".join(changed)
                )  # fmt: skip
            self.pretrained = self.meta["pretrained"]
        else:
            self.pretrained = builder.resolve_pretrained(config)
        self.iterations = builder.iterations_per_epoch(config, self.data)
        # ---- checks done: from here on, work
        if distributed.launched_by_torchrun():
            self.device = distributed.init_from_environment(config.device)
        else:
            self.device = resolve_device(config.device)
        self.is_main = distributed.is_main_process()
        if self.is_main:
            if overwrite:
                remove_run_files(config.output_dir)
            os.makedirs(config.output_dir, exist_ok=True)
            stale = checkpoints.remove_stale_temporaries(config.output_dir)
            if stale:
                LOGGER.warning("removed %d stale temporary file(s) of a run killed "
                               "while saving", len(stale))  # fmt: skip
        distributed.barrier()
        checkpoints.seed_everything(config.seed)
        # resuming: the trunk's weights come from the checkpoint
        start = {"kind": "random init", "path": None} if self.meta else self.pretrained
        self.model = builder.build_model(config, start, self.device)
        self.attach_transforms()
        self.loss = builder.build_loss(
            config, self.data.num_classes, self.model.embedding_size, self.device
        )
        self.optimizers, self.lr_schedulers, self.scaler = builder.build_optimization(
            config, self.model, self.loss, self.iterations
        )
        self.sampler = builder.build_sampler(
            config, self.data, self.iterations, self.world_size
        )
        self.selection = Selection(config.selection_metric, config.patience)
        self.history: List[Dict[str, Any]] = []
        self.proxy_cosines_init = proxy_cosine_stats(builder.class_weights(self.loss))
        self.start_epoch = 1
        if self.meta is not None:
            self.load_checkpoint()

    def attach_transforms(self):
        data, model = self.data, self.model
        data.train.transform = model.train_transform
        if data.val is not None:
            data.val.transform = model.eval_transform
        if self.config.cache_images != "none":  # before SkipBadImages: it sees the
            # cache's errors as it would see the files'
            interpolation = model.trunk.data_config.get("interpolation", "bicubic")
            data.train = builder.cache_training_images(
                self.config, data.train, interpolation, self.device
            )
        if self.config.skip_bad_images:
            from ..datasets import SkipBadImages

            record = os.path.join(self.config.output_dir, checkpoints.SKIPPED_IMAGES)
            data.train = SkipBadImages(data.train, record)
            if data.val is not None:
                data.val = SkipBadImages(data.val, record)

    @property
    def modules(self) -> Dict[str, torch.nn.Module]:
        return {"trunk": self.model.trunk, "embedder": self.model.embedder,
                "loss": self.loss}  # fmt: skip

    # ------------------------------------------------------------ checkpoints
    def meta_now(self, epoch: int) -> Dict[str, Any]:
        return {
            "epoch": epoch,
            "config": self.config.to_dict(),
            "history": self.history,
            "selection": self.selection.state_dict(),
            "proxy_cosines_init": self.proxy_cosines_init,
            "data": self.fingerprint,
            "world_size": self.world_size,
            "pretrained": self.pretrained,
            "pml_soproxy": __version__,
        }

    def save_checkpoint(self, epoch: int, rng: List, samplers: List):
        state = {
            "model": {k: m.state_dict() for k, m in self.modules.items()},
            "optimizers": {k: v.state_dict() for k, v in self.optimizers.items()},
            "lr_schedulers": {k: v.state_dict() for k, v in self.lr_schedulers.items()},
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "rng": rng,
            "sampler": samplers,
        }
        path = os.path.join(self.config.output_dir, checkpoints.CHECKPOINT)
        checkpoints.save_checkpoint(path, state, self.meta_now(epoch))

    def load_checkpoint(self):
        path = os.path.join(self.config.output_dir, checkpoints.CHECKPOINT)
        state = checkpoints.load_checkpoint(path)
        for name, module in self.modules.items():
            builder.load_state(module, state["model"][name], path, name)
        for k, v in self.optimizers.items():
            v.load_state_dict(state["optimizers"][k])
        for k, v in self.lr_schedulers.items():
            v.load_state_dict(state["lr_schedulers"][k])
        if self.scaler is not None and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        rank = distributed.rank()
        self.sampler.load_state_dict(state["sampler"][rank])
        checkpoints.set_rng_state(state["rng"][rank])
        meta = state["meta"]
        self.history = meta["history"]
        self.selection.load_state_dict(meta["selection"])
        self.proxy_cosines_init = meta["proxy_cosines_init"]
        self.start_epoch = meta["epoch"] + 1
        if self.is_main:
            LOGGER.warning("resuming %s after epoch %d", self.config.output_dir,
                           meta["epoch"])  # fmt: skip

    # --------------------------------------------------------------- training
    def end_of_epoch(self, trainer) -> bool:
        """Rank 0 evaluates, logs and checkpoints; the other ranks wait."""
        keep_going = self.main_end_of_epoch(trainer) if self.is_main else None
        # after evaluation, which draws from the RNG too: resuming must replay it
        rng = distributed.all_gather_objects(checkpoints.rng_state())
        samplers = distributed.all_gather_objects(self.sampler.state_dict())
        if self.is_main:
            self.save_checkpoint(trainer.epoch, rng, samplers)
        return distributed.all_gather_objects(keep_going)[0]

    def main_end_of_epoch(self, trainer) -> bool:
        epoch = trainer.epoch
        record = {"epoch": epoch, "loss": trainer.epoch_loss}
        if self.data.val is not None:
            metrics = builder.evaluate_split(
                self.tester, "val", self.data.val, self.model, epoch
            )
            record.update(metrics)
            if self.selection.update(epoch, metrics):
                checkpoints.save_weights(
                    os.path.join(self.config.output_dir, checkpoints.BEST_WEIGHTS),
                    self.modules,
                    self.weights_meta(epoch),
                )
        stats = proxy_cosine_stats(builder.class_weights(self.loss))
        record.update(proxy_mean_abs_cos=stats["mean_abs_cos"],
                      proxy_max_abs_cos=stats["max_abs_cos"])  # fmt: skip
        self.history.append(record)
        self.hooks.record_keeper.update_records({"epoch_summary": record}, epoch)
        self.hooks.record_keeper.save_records()
        return self.selection.keep_going(epoch)

    def weights_meta(self, epoch: int) -> Dict[str, Any]:
        return {"epoch": epoch, "config": self.config.to_dict(),
                "num_classes": self.data.num_classes, "pretrained": self.pretrained,
                "pml_soproxy": __version__}  # fmt: skip

    def nonfinite_message(self, epoch: int, iteration: int, of: int) -> str:
        c = self.config
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

    def train(self):
        from pytorch_metric_learning.utils import logging_presets

        config = self.config
        if self.is_main:
            self.hooks = logging_presets.HookContainer(
                make_record_keeper(os.path.join(config.output_dir, "logs")),
                primary_metric=config.selection_metric,
                save_models=False,
            )
            self.tester = builder.build_tester(config, self.device)

        def end_of_iteration(trainer):
            if self.is_main:
                self.hooks.end_of_iteration_hook(trainer)

        self.trainer = SOProxyTrainer(
            models={
                "trunk": distributed.wrap_model(self.model.trunk_for_eval, self.device),
                "embedder": distributed.wrap_model(self.model.embedder, self.device),
            },
            optimizers=self.optimizers,
            batch_size=config.batch_size // self.world_size,
            loss_funcs={"metric_loss": distributed.wrap_loss(self.loss, self.device)},
            dataset=self.data.train,
            sampler=self.sampler,
            iterations_per_epoch=self.iterations,
            data_device=self.device,
            lr_schedulers=self.lr_schedulers,
            gradient_clippers=builder.gradient_clippers(config, self.model),
            loader_settings=builder.loader_settings(config, self.device),
            end_of_iteration_hook=end_of_iteration,
            end_of_epoch_hook=self.end_of_epoch,
            scaler=self.scaler,
            log_every=config.log_every,
            world_size=self.world_size,
            show_progress=self.is_main,
            on_nonfinite=self.nonfinite_message,
        )
        if self.start_epoch <= config.epochs:
            self.trainer.train(start_epoch=self.start_epoch, num_epochs=config.epochs)

    # ------------------------------------------------------------- evaluation
    def load_selected_weights(self) -> str:
        """The validation-selected weights, or the last epoch's without a val split."""
        path = os.path.join(self.config.output_dir, checkpoints.BEST_WEIGHTS)
        if self.data.val is None or self.selection.best_epoch is None:
            return "last epoch"
        weights = checkpoints.load_weights(path)
        for name, module in self.modules.items():
            builder.load_state(module, weights[name], path, name)
        return self.selection.describe()

    def test(self, keep: Optional[Dict] = None) -> Dict[str, float]:
        return builder.evaluate_test(self.config, self.model, self.device, keep)

    def results(self, selected: str, test: Dict[str, float]) -> Dict[str, Any]:
        c = self.config
        return {
            "dataset": c.dataset,
            "model_name": c.model_name,
            "pretrained_weights": self.pretrained,
            "selected": selected,
            "best_epoch": self.selection.best_epoch,
            "test": test,
            "history": self.history,
            "proxy_cosines_init": self.proxy_cosines_init,
            "proxy_cosines_final": proxy_cosine_stats(builder.class_weights(self.loss)),
            "skipped_images": skipped_images(c.output_dir),
            "config": c.to_dict(),
            "world_size": self.world_size,
            "pml_soproxy": __version__,
            "date": time.strftime("%Y-%m-%d %H:%M"),
        }


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


def train(
    config: Union[TrainConfig, ResolvedConfig],
    resume: bool = False,
    overwrite: bool = False,
) -> Optional[Dict[str, Any]]:
    """Train, keep the epoch chosen on validation classes, evaluate the test split
    once with those weights; write results.json. None on ranks other than 0."""
    if isinstance(config, ResolvedConfig):
        config = config.config
    with interrupt_handling(config.output_dir):
        run = Run(config, resume=resume, overwrite=overwrite)
        run.train()
        distributed.barrier()
        if not run.is_main:
            return None
        selected = run.load_selected_weights()
        kept: Optional[Dict[str, Any]] = {} if config.figures else None
        results = run.results(selected, run.test(kept))
    path = os.path.join(config.output_dir, checkpoints.RESULTS)
    checkpoints.atomic_write_json(path, results)
    if kept:  # after results.json: a failing figure loses no result
        results["figures"] = write_test_figures(kept, config)
        checkpoints.atomic_write_json(path, results)
    return results


def write_test_figures(kept: Dict[str, Any], config: TrainConfig) -> List[str]:
    from ..figures import test_split_figures

    folder = os.path.join(config.output_dir, "figures")
    try:
        return test_split_figures(kept, folder, seed=config.seed)
    except Exception as err:  # figures are a courtesy, never a reason to fail
        LOGGER.warning("the test figures could not be drawn (%s: %s)",
                       type(err).__name__, err)  # fmt: skip
        return []
