"""The run: check the folder and the resume state, build, train with selection on
the validation classes, test the selected weights once, write ``results.json``.

Every check that can fail runs before the model is built: the config (config/),
the run folder and the checkpoint's metadata (read without loading its tensors), the
data (parsed, and big enough for one batch) and the pretrained weights (found). The
folder checks and the files besides the weights are in run_folder.py.
"""

import functools
import logging
import os
import time
from typing import Any, Dict, List, Optional, Union

import torch

from .. import __version__, distributed
from ..device import resolve_device
from ..report import proxy_cosine_stats
from . import builder, checkpoints, run_folder
from .config import ResolvedConfig, TrainConfig
from .selection import Selection
from .trainer import SOProxyTrainer

LOGGER = logging.getLogger("pml_soproxy")


class Run:
    """One training run, built from a checked config."""

    #: the trainer :meth:`make_trainer` builds (benchmarks subclass it to time steps)
    trainer_class = SOProxyTrainer

    def __init__(self, config: TrainConfig, resume: bool = False,
                 overwrite: bool = False):  # fmt: skip
        self.config = config
        self.meta = run_folder.check_folder(config, resume, overwrite)
        self.data = builder.build_data(config)
        self.world_size = distributed.launched_world_size()
        builder.check_data_fits(config, self.data, self.world_size)
        self.fingerprint = self.data.fingerprint()  # saved with every checkpoint
        if self.meta is not None:
            run_folder.check_resumed_data(self.meta, config, self.fingerprint)
            self.pretrained = self.meta["pretrained"]
        else:
            self.pretrained = builder.resolve_pretrained(config)
        self.iterations = builder.iterations_per_epoch(config, self.data)
        # ---- checks done: from here on, work
        self.start(overwrite)
        self.build()
        if self.meta is not None:
            self.load_checkpoint()

    def start(self, overwrite: bool):
        """The device and process group, the folder (rank 0), the seeds."""
        config = self.config
        if distributed.launched_by_torchrun():
            self.device = distributed.init_from_environment(config.device)
        else:
            self.device = resolve_device(config.device)
        self.is_main = distributed.is_main_process()
        if self.is_main:
            run_folder.prepare_folder(config.output_dir, overwrite)
        distributed.barrier()
        checkpoints.seed_everything(config.seed)

    def build(self):
        """Model, loss, optimization, sampler and selection, freshly initialised."""
        config = self.config
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

    def train(self):
        from pytorch_metric_learning.utils import logging_presets

        config = self.config
        if self.is_main:
            self.hooks = logging_presets.HookContainer(
                run_folder.make_record_keeper(os.path.join(config.output_dir, "logs")),
                primary_metric=config.selection_metric,
                save_models=False,
            )
            self.tester = builder.build_tester(config, self.device)
        self.trainer = self.make_trainer()
        if self.start_epoch <= config.epochs:
            self.trainer.train(start_epoch=self.start_epoch, num_epochs=config.epochs)

    def end_of_iteration(self, trainer):
        if self.is_main:
            self.hooks.end_of_iteration_hook(trainer)

    def make_trainer(self) -> SOProxyTrainer:
        """PML's trainer over this run's parts (models wrapped for DDP), with the
        recipe's hooks, precision and progress settings."""
        config, device = self.config, self.device
        wrap = distributed.wrap_model
        return self.trainer_class(
            models={"trunk": wrap(self.model.trunk_for_eval, device),
                    "embedder": wrap(self.model.embedder, device)},
            optimizers=self.optimizers,
            batch_size=config.batch_size // self.world_size,
            loss_funcs={"metric_loss": distributed.wrap_loss(self.loss, device)},
            dataset=self.data.train, sampler=self.sampler,
            iterations_per_epoch=self.iterations, data_device=device,
            lr_schedulers=self.lr_schedulers,
            gradient_clippers=builder.gradient_clippers(config, self.model),
            loader_settings=builder.loader_settings(config, device),
            end_of_iteration_hook=self.end_of_iteration,
            end_of_epoch_hook=self.end_of_epoch, scaler=self.scaler,
            log_every=config.log_every, world_size=self.world_size,
            show_progress=self.is_main,
            on_nonfinite=functools.partial(run_folder.nonfinite_message, config),
        )  # fmt: skip

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
            "skipped_images": run_folder.skipped_images(c.output_dir),
            "config": c.to_dict(),
            "world_size": self.world_size,
            "pml_soproxy": __version__,
            "date": time.strftime("%Y-%m-%d %H:%M"),
        }


def train(
    config: Union[TrainConfig, ResolvedConfig],
    resume: bool = False,
    overwrite: bool = False,
) -> Optional[Dict[str, Any]]:
    """Train, keep the epoch chosen on validation classes, evaluate the test split
    once with those weights; write results.json. None on ranks other than 0."""
    if isinstance(config, ResolvedConfig):
        config = config.config
    with run_folder.interrupt_handling(config.output_dir):
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
        results["figures"] = run_folder.write_test_figures(kept, config)
        checkpoints.atomic_write_json(path, results)
    return results
