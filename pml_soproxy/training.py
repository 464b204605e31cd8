"""The native recipe: a DeiT trunk trained with SO Proxy Anchor through PML's trainer,
tester and hooks, assembled from one config.

Model selection uses a class-disjoint validation split carved from the training
classes (or, with ``val_fraction: 0``, the last epoch); the test split is only evaluated
once, at the end, with the selected weights.
"""

import json
import logging
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import timm.data
import torch
import yaml
from pytorch_metric_learning import testers, trainers
from pytorch_metric_learning.samplers import MPerClassSampler
from pytorch_metric_learning.utils import common_functions as c_f
from pytorch_metric_learning.utils import logging_presets

from . import distributed
from .datasets import create_dataset
from .datasets.splits import ClassSubset, train_val_split
from .device import AutocastTrunk, autocast_dtype, grad_scaler, resolve_device
from .evaluation import RECALL_AT_K, RecallAtKCalculator
from .losses import SoftOrthogonalProxyAnchorLoss
from .trunks import create_trunk, get_transforms

LOGGER = logging.getLogger("pml_soproxy")
CHECKPOINT = "checkpoint_latest.pth"
BEST_WEIGHTS = "weights_best.pth"
RESULTS = "results.json"
TEST_SPLITS = {"inshop": ("query", ["gallery"])}


@dataclass
class TrainConfig:
    dataset: str = "digits"
    data_root: Optional[str] = None
    output_dir: str = "runs/digits"
    model_name: str = "deit_small_distilled_patch16_224"
    checkpoint_path: Optional[str] = None  # pretrained trunk weights (local file)
    trunk_kwargs: Dict[str, Any] = field(default_factory=dict)  # timm overrides
    augment: Dict[str, Any] = field(
        default_factory=dict
    )  # timm create_transform kwargs
    embedding_size: int = 0  # 0: no embedder, the trunk feature is the embedding
    so_weight: float = 1.0
    margin: float = 0.1
    alpha: float = 32.0
    epochs: int = 40
    batch_size: int = 120
    samples_per_class: int = 4
    iterations_per_epoch: Optional[int] = None
    lr: float = 1e-4
    proxy_lr_multiplier: float = 100.0
    weight_decay: float = 1e-4
    warmup_epochs: int = 1  # epochs that train only the new layers (embedder, proxies)
    grad_clip: float = 10.0
    val_fraction: float = 0.2  # share of training classes held out for selection
    selection_metric: str = "precision_at_1"  # = Recall@1
    patience: Optional[int] = None
    recall_at: Optional[List[int]] = None  # default: the dataset's standard K set
    eval_batch_size: int = 128
    num_workers: int = 2
    device: str = "auto"
    precision: str = "auto"
    seed: int = 0

    def validate(self):
        if self.batch_size % self.samples_per_class:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a multiple of "
                f"samples_per_class ({self.samples_per_class})"
            )
        if not 0 <= self.val_fraction < 1:
            raise ValueError("val_fraction must be in [0, 1)")


def read_yaml(path) -> Dict[str, Any]:
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping of config keys to values")
    return values


def load_config(
    dataset: str,
    overrides: Optional[Dict[str, Any]] = None,
    extra_configs: Sequence[str] = (),
) -> TrainConfig:
    """Layered config: ``configs/default.yaml``, ``configs/<dataset>.yaml``, then each
    of ``extra_configs`` (a YAML file, or the name of a packaged preset such as
    ``tiny-cpu``), then ``overrides`` (None values are ignored)."""
    configs = resources.files("pml_soproxy") / "configs"
    values: Dict[str, Any] = {}
    for name in ("default", dataset):
        if (configs / f"{name}.yaml").is_file():
            values.update(read_yaml(configs / f"{name}.yaml"))
    for extra in extra_configs:
        preset = configs / "presets" / f"{extra}.yaml"
        if preset.is_file():
            values.update(read_yaml(preset))
        elif Path(extra).is_file():
            values.update(read_yaml(Path(extra)))
        else:
            presets = sorted(p.name[:-5] for p in (configs / "presets").iterdir())
            raise FileNotFoundError(
                f"config {extra!r} is neither a YAML file nor a preset ({presets})"
            )
    values["dataset"] = dataset
    values.setdefault("output_dir", os.path.join("runs", dataset))
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown config keys {unknown}; known keys: {sorted(known)}")
    config = TrainConfig(**values)
    config.validate()
    return config


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    c_f.NUMPY_RANDOM = np.random.RandomState(seed)  # PML's samplers draw from this


def rng_state() -> Dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "pml_numpy": c_f.NUMPY_RANDOM.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: Dict[str, Any]):
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    c_f.NUMPY_RANDOM.set_state(state["pml_numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_save(obj: Any, path: str):
    """torch.save to a temporary file, then rename: a crash never leaves half a file."""
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def make_record_keeper(folder: str):
    """record-keeper's csv/sqlite logs (PML's get_record_keeper also wants tensorboard)."""
    import record_keeper

    writer = record_keeper.RecordWriter(folder=folder, is_new_experiment=False)
    return record_keeper.RecordKeeper(
        record_writer=writer,
        attributes_to_search_for=c_f.list_of_recordable_attributes_list_names(),
    )


COSINE_BINS = np.linspace(-1, 1, 101)


def proxy_cosine_stats(proxies: torch.Tensor, chunk: int = 2048) -> Dict[str, Any]:
    """Mean and max |cos| between distinct proxies and a histogram of their cosines
    (100 bins on [-1, 1]), computed in row chunks so SOP's 11k proxies fit."""
    unit = torch.nn.functional.normalize(proxies.detach().float().cpu(), dim=1)
    counts = np.zeros(len(COSINE_BINS) - 1, dtype=np.int64)
    total, largest = 0.0, 0.0
    for start in range(0, len(unit), chunk):
        cos = unit[start : start + chunk] @ unit.t()
        rows = torch.arange(len(cos))
        cos[rows, rows + start] = float("nan")  # drop self-similarity
        values = cos[~torch.isnan(cos)]
        counts += np.histogram(values.numpy(), bins=COSINE_BINS)[0]
        total += values.abs().sum().item()
        largest = max(largest, values.abs().max().item() if len(values) else 0.0)
    pairs = len(unit) * (len(unit) - 1)
    return {
        "mean_abs_cos": total / max(pairs, 1),
        "max_abs_cos": largest,
        "histogram": counts.tolist(),
    }


class SOProxyTrainer(trainers.MetricLossOnly):
    """PML's MetricLossOnly plus fp16 loss scaling (PML's trainer has none)."""

    def __init__(self, *args, scaler=None, **kwargs):
        self.scaler = scaler
        super().__init__(*args, **kwargs)

    def backward(self):
        if self.scaler is None:
            return super().backward()
        self.scaler.scale(self.losses["total_loss"]).backward()

    def clip_gradients(self):
        if self.scaler is not None:
            for optimizer in self.optimizers.values():
                self.scaler.unscale_(optimizer)
        super().clip_gradients()

    def step_optimizers(self):
        if self.scaler is None:
            return super().step_optimizers()
        for optimizer in self.optimizers.values():
            self.scaler.step(optimizer)
        self.scaler.update()


class Run:
    """Everything one training run needs, built from a ``TrainConfig``."""

    def __init__(self, config: TrainConfig):
        self.config = config
        if distributed.launched_by_torchrun():
            self.device = distributed.init_from_environment(config.device)
        else:
            self.device = resolve_device(config.device)
        self.world_size = distributed.world_size()
        self.is_main = distributed.is_main_process()
        if config.batch_size % (self.world_size * config.samples_per_class):
            raise ValueError(
                f"batch_size ({config.batch_size}, the global batch) must split into "
                f"{self.world_size} per-process batches that are multiples of "
                f"samples_per_class ({config.samples_per_class})"
            )
        if self.is_main:
            os.makedirs(config.output_dir, exist_ok=True)
        seed_everything(config.seed)
        self.amp_dtype = autocast_dtype(self.device, config.precision)
        self.recall_at = tuple(
            config.recall_at or RECALL_AT_K.get(config.dataset, (1, 2, 4, 8))
        )
        self.build_model()
        self.build_data()
        self.build_optimization()
        self.history: List[Dict[str, Any]] = []
        self.proxy_cosines_init = proxy_cosine_stats(self.loss.proxies)
        self.best_epoch = None
        self.best_value = -math.inf
        self.start_epoch = 1
        self.rng_states = [rng_state()]
        self.sampler_state = None
        self.sampler = None

    # ----------------------------------------------------------------- building
    def build_model(self):
        config = self.config
        pretrained = config.checkpoint_path is not None
        self.trunk = create_trunk(
            config.model_name,
            pretrained=pretrained,
            checkpoint_path=config.checkpoint_path,
            **config.trunk_kwargs,
        )
        self.eval_transform = get_transforms(self.trunk, train=False)
        self.train_transform = timm.data.create_transform(
            **self.trunk.data_config, is_training=True, **config.augment
        )
        if config.embedding_size:
            self.embedder = torch.nn.Linear(
                self.trunk.output_size, config.embedding_size
            )
            embedding_size = config.embedding_size
        else:
            self.embedder = torch.nn.Identity()
            embedding_size = self.trunk.output_size
        self.embedding_size = embedding_size
        self.trunk.to(self.device)
        self.embedder.to(self.device)
        self.trunk_for_eval = AutocastTrunk(
            self.trunk, self.device.type, self.amp_dtype
        )

    def build_data(self):
        config = self.config
        full = create_dataset(config.dataset, config.data_root, "train")
        if config.val_fraction > 0:
            self.train_set, self.val_set = train_val_split(
                full,
                config.val_fraction,
                seed=config.seed,
                train_transform=self.train_transform,
                val_transform=self.eval_transform,
            )
        else:
            self.train_set = ClassSubset(
                full, np.arange(len(full)), self.train_transform
            )
            self.val_set = None
        self.num_classes = self.train_set.num_classes
        self.loss = SoftOrthogonalProxyAnchorLoss(
            self.num_classes,
            self.embedding_size,
            margin=config.margin,
            alpha=config.alpha,
            so_weight=config.so_weight,
        ).to(self.device)

    def build_optimization(self):
        config = self.config

        def optimizer(params, lr):
            return torch.optim.AdamW(params, lr=lr, weight_decay=config.weight_decay)

        self.optimizers = {
            "trunk_optimizer": optimizer(self.trunk.parameters(), config.lr),
            "metric_loss_optimizer": optimizer(
                self.loss.parameters(), config.lr * config.proxy_lr_multiplier
            ),
        }
        if config.embedding_size:
            self.optimizers["embedder_optimizer"] = optimizer(
                self.embedder.parameters(), config.lr
            )
        batches = len(self.train_set) // config.batch_size
        self.iterations_per_epoch = config.iterations_per_epoch or max(1, batches)
        total = self.iterations_per_epoch * config.epochs
        warmup = self.iterations_per_epoch * min(
            config.warmup_epochs, config.epochs - 1
        )

        def cosine(step):
            return 0.5 * (1 + math.cos(math.pi * min(step, total) / total))

        def trunk_factor(step):  # new layers only during warm-up, then cosine
            return 0.0 if step < warmup else cosine(step)

        self.lr_schedulers = {
            f"{name[: -len('_optimizer')]}_scheduler_by_iteration": torch.optim.lr_scheduler.LambdaLR(
                opt, trunk_factor if name == "trunk_optimizer" else cosine
            )
            for name, opt in self.optimizers.items()
        }
        self.scaler = grad_scaler(self.device, self.amp_dtype)

    def make_tester(self, end_of_testing_hook=None):
        return testers.GlobalEmbeddingSpaceTester(
            batch_size=self.config.eval_batch_size,
            dataloader_num_workers=self.config.num_workers,
            data_device=self.device,
            accuracy_calculator=RecallAtKCalculator(
                recall_at=self.recall_at, device=self.device
            ),
            end_of_testing_hook=end_of_testing_hook,
        )

    # ------------------------------------------------------------ checkpoints
    def state(self, epoch: int) -> Dict[str, Any]:
        return {
            "epoch": epoch,
            "config": asdict(self.config),
            "trunk": self.trunk.state_dict(),
            "embedder": self.embedder.state_dict(),
            "loss": self.loss.state_dict(),
            "optimizers": {k: v.state_dict() for k, v in self.optimizers.items()},
            "lr_schedulers": {k: v.state_dict() for k, v in self.lr_schedulers.items()},
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "rng": self.rng_states,  # one per process
            "sampler": (
                self.sampler.state_dict()
                if hasattr(self.sampler, "state_dict")
                else None
            ),
            "history": self.history,
            "best_epoch": self.best_epoch,
            "best_value": self.best_value,
            "proxy_cosines_init": self.proxy_cosines_init,
            "num_classes": self.num_classes,
        }

    def weights(self) -> Dict[str, Any]:
        return {
            "config": asdict(self.config),
            "trunk": self.trunk.state_dict(),
            "embedder": self.embedder.state_dict(),
            "loss": self.loss.state_dict(),
            "num_classes": self.num_classes,
        }

    def save_checkpoint(self, epoch: int):
        atomic_save(self.state(epoch), os.path.join(self.config.output_dir, CHECKPOINT))

    def resume(self) -> bool:
        path = os.path.join(self.config.output_dir, CHECKPOINT)
        if not os.path.exists(path):
            return False
        state = torch.load(path, map_location=self.device, weights_only=False)
        if state["num_classes"] != self.num_classes:
            raise ValueError(
                f"{path} was trained with {state['num_classes']} classes, this run has "
                f"{self.num_classes}: resume with the same dataset and split"
            )
        self.trunk.load_state_dict(state["trunk"])
        self.embedder.load_state_dict(state["embedder"])
        self.loss.load_state_dict(state["loss"])
        for k, v in self.optimizers.items():
            v.load_state_dict(state["optimizers"][k])
        for k, v in self.lr_schedulers.items():
            v.load_state_dict(state["lr_schedulers"][k])
        if self.scaler and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        if len(state["rng"]) != self.world_size:
            raise ValueError(
                f"{path} was written by {len(state['rng'])} processes; resume with the "
                f"same number (this run has {self.world_size})"
            )
        set_rng_state(state["rng"][distributed.rank()])
        self.sampler_state = state["sampler"]
        self.history = state["history"]
        self.best_epoch, self.best_value = state["best_epoch"], state["best_value"]
        self.proxy_cosines_init = state["proxy_cosines_init"]
        self.start_epoch = state["epoch"] + 1
        return True

    # --------------------------------------------------------------- training
    def end_of_epoch(self, trainer) -> bool:
        """Rank 0 evaluates, logs and checkpoints; the other ranks wait."""
        keep_going = self.main_process_end_of_epoch(trainer) if self.is_main else None
        # after evaluation, which draws from the RNG too: resuming must replay it
        self.rng_states = distributed.all_gather_objects(rng_state())
        if self.is_main:
            self.save_checkpoint(trainer.epoch)
        return distributed.all_gather_objects(keep_going)[0]

    def main_process_end_of_epoch(self, trainer) -> bool:
        epoch = trainer.epoch
        record = {
            "epoch": epoch,
            "loss": float(np.mean(self._epoch_losses or [float("nan")])),
        }
        self._epoch_losses = []
        if self.val_set is not None:
            accuracies = self.tester.test(
                {"val": self.val_set}, epoch, self.trunk_for_eval, self.embedder
            )["val"]
            record.update(
                {
                    k.replace("_level0", ""): v
                    for k, v in accuracies.items()
                    if k != "epoch"
                }
            )
            value = record[self.config.selection_metric]
            if value > self.best_value:
                self.best_epoch, self.best_value = epoch, value
                atomic_save(
                    self.weights(), os.path.join(self.config.output_dir, BEST_WEIGHTS)
                )
        stats = proxy_cosine_stats(self.loss.proxies)
        record.update(
            proxy_mean_abs_cos=stats["mean_abs_cos"],
            proxy_max_abs_cos=stats["max_abs_cos"],
        )
        self.history.append(record)
        self.hooks.record_keeper.update_records({"epoch_summary": record}, epoch)
        self.hooks.record_keeper.save_records()
        if self.config.patience is not None and self.best_epoch is not None:
            return epoch - self.best_epoch <= self.config.patience
        return True

    def make_sampler(self):
        config = self.config
        if self.world_size == 1:
            return MPerClassSampler(
                self.train_set.labels,
                m=config.samples_per_class,
                batch_size=config.batch_size,
                length_before_new_iter=self.iterations_per_epoch * config.batch_size,
            )
        sampler = distributed.DistributedMPerClassSampler(
            self.train_set.labels,
            m=config.samples_per_class,
            global_batch_size=config.batch_size,
            iterations_per_epoch=self.iterations_per_epoch,
            seed=config.seed,
        )
        if self.sampler_state is not None:
            sampler.load_state_dict(self.sampler_state)
        return sampler

    def train(self):
        config = self.config
        if self.is_main:
            self.hooks = logging_presets.HookContainer(
                make_record_keeper(os.path.join(config.output_dir, "logs")),
                primary_metric=config.selection_metric,
                save_models=False,
            )
            self.tester = self.make_tester()
        self._epoch_losses = []

        def end_of_iteration(trainer):
            if self.is_main:
                self._epoch_losses.append(trainer.losses["total_loss"].item())
                self.hooks.end_of_iteration_hook(trainer)

        grad_clippers = None
        if config.grad_clip:
            # gradient-norm clipping of trunk + embedder (Proxy Anchor clips at 10)
            params = [p for m in (self.trunk, self.embedder) for p in m.parameters()]

            def clip():
                torch.nn.utils.clip_grad_norm_(params, config.grad_clip)

            grad_clippers = {"trunk_grad_clipper": clip}
        self.sampler = self.make_sampler()
        self.trainer = SOProxyTrainer(
            models={
                "trunk": distributed.wrap_model(self.trunk_for_eval, self.device),
                "embedder": distributed.wrap_model(self.embedder, self.device),
            },
            optimizers=self.optimizers,
            batch_size=config.batch_size // self.world_size,
            loss_funcs={"metric_loss": distributed.wrap_loss(self.loss, self.device)},
            dataset=self.train_set,
            sampler=self.sampler,
            iterations_per_epoch=self.iterations_per_epoch,
            data_device=self.device,
            lr_schedulers=self.lr_schedulers,
            gradient_clippers=grad_clippers,
            dataloader_num_workers=config.num_workers,
            end_of_iteration_hook=end_of_iteration,
            end_of_epoch_hook=self.end_of_epoch,
            scaler=self.scaler,
        )
        if self.start_epoch <= config.epochs:
            self.trainer.train(start_epoch=self.start_epoch, num_epochs=config.epochs)

    # ------------------------------------------------------------- evaluation
    def load_selected_weights(self) -> str:
        """The validation-selected weights, or the last epoch's without a val split."""
        path = os.path.join(self.config.output_dir, BEST_WEIGHTS)
        if self.val_set is not None and os.path.exists(path):
            weights = torch.load(path, map_location=self.device, weights_only=False)
            self.trunk.load_state_dict(weights["trunk"])
            self.embedder.load_state_dict(weights["embedder"])
            self.loss.load_state_dict(weights["loss"])
            return f"epoch {self.best_epoch} (best validation {self.config.selection_metric})"
        return "last epoch"

    def test(self) -> Dict[str, float]:
        return evaluate_on_test(
            self.config,
            self.trunk_for_eval,
            self.embedder,
            self.eval_transform,
            self.device,
            self.recall_at,
        )


def evaluate_on_test(
    config, trunk, embedder, transform, device, recall_at
) -> Dict[str, float]:
    """Test-split Recall@K, MAP@R and R-precision (query vs gallery for In-Shop)."""
    tester = testers.GlobalEmbeddingSpaceTester(
        batch_size=config.eval_batch_size,
        dataloader_num_workers=config.num_workers,
        data_device=device,
        accuracy_calculator=RecallAtKCalculator(recall_at=recall_at, device=device),
    )
    query_split, reference_splits = TEST_SPLITS.get(config.dataset, ("test", ["test"]))
    splits = {
        s: create_dataset(config.dataset, config.data_root, s, transform=transform)
        for s in {query_split, *reference_splits}
    }
    accuracies = tester.test(
        splits, 0, trunk, embedder, splits_to_eval=[(query_split, reference_splits)]
    )[query_split]
    return {k.replace("_level0", ""): v for k, v in accuracies.items() if k != "epoch"}


def train(config: TrainConfig, resume: bool = False) -> Dict[str, Any]:
    """Train, keep the epoch chosen on validation classes, evaluate the test split
    once with those weights; write results.json."""
    run = Run(config)
    if resume and run.resume():
        if run.is_main:
            LOGGER.warning("resuming after epoch %d", run.start_epoch - 1)
    run.train()
    distributed.barrier()
    if not run.is_main:
        return None
    selected = run.load_selected_weights()
    test = run.test()
    results = {
        "dataset": config.dataset,
        "model_name": config.model_name,
        "pretrained_weights": config.checkpoint_path,
        "selected": selected,
        "best_epoch": run.best_epoch,
        "test": test,
        "history": run.history,
        "proxy_cosines_init": run.proxy_cosines_init,
        "proxy_cosines_final": proxy_cosine_stats(run.loss.proxies),
        "config": asdict(config),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    with open(os.path.join(config.output_dir, RESULTS), "w") as f:
        json.dump(results, f, indent=1)
    return results


def evaluate_checkpoint(
    path: str, data_root: Optional[str] = None, device: str = "auto"
) -> Dict[str, Any]:
    """Re-run the test evaluation of a saved model (a run's weights_best.pth, or
    its checkpoint_latest.pth)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"no checkpoint at {path}; pass a run's weights_best.pth or its "
            "checkpoint_latest.pth"
        )
    saved = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(saved, dict) or "config" not in saved or "trunk" not in saved:
        raise ValueError(
            f"{path} is not a pml-soproxy checkpoint (no 'config'/'trunk' entries)"
        )
    values = dict(saved["config"])
    if data_root is not None:
        values["data_root"] = data_root
    config = TrainConfig(**values)
    torch_device = resolve_device(device)
    trunk = create_trunk(config.model_name, pretrained=False, **config.trunk_kwargs)
    trunk.load_state_dict(saved["trunk"])
    embedder = (
        torch.nn.Linear(trunk.output_size, config.embedding_size)
        if config.embedding_size
        else torch.nn.Identity()
    )
    embedder.load_state_dict(saved["embedder"])
    trunk.to(torch_device)
    embedder.to(torch_device)
    wrapped = AutocastTrunk(
        trunk, torch_device.type, autocast_dtype(torch_device, config.precision)
    )
    recall_at = tuple(config.recall_at or RECALL_AT_K.get(config.dataset, (1, 2, 4, 8)))
    test = evaluate_on_test(
        config,
        wrapped,
        embedder,
        get_transforms(trunk, train=False),
        torch_device,
        recall_at,
    )
    results = {
        "dataset": config.dataset,
        "model_name": config.model_name,
        "pretrained_weights": config.checkpoint_path,
        "selected": f"checkpoint {os.path.basename(path)}"
        + (f" (epoch {saved['epoch']})" if "epoch" in saved else ""),
        "test": test,
        "checkpoint": os.path.abspath(path),
    }
    with open(os.path.join(os.path.dirname(path) or ".", "evaluation.json"), "w") as f:
        json.dump(results, f, indent=1)
    return results
