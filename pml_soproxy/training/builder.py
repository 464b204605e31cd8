"""Everything a run is made of, built from its config: data, trunk, embedder, loss,
sampler, optimizers, tester and calculator. ``train`` and ``evaluate`` both build
through these functions, so a saved run is rebuilt exactly as it was trained."""

import hashlib
import json
import math
import os
from dataclasses import dataclass
from typing import Any, Dict, Optional

import numpy as np
import torch

from ..device import autocast_dtype, grad_scaler
from .config import ConfigError, TrainConfig, recall_at
from .model import (  # noqa: F401 (the model side, built through this door too)
    Model,
    build_loss,
    build_model,
    class_weights,
    load_state,
    resolve_pretrained,
)


def create_dataset(config: TrainConfig, split: str, transform=None):
    from ..datasets import create_dataset as create
    from ..datasets import set_max_image_pixels

    dataset = create(config.dataset, config.data_root, split, transform=transform)
    return set_max_image_pixels(dataset, config.max_image_pixels)


############
### data ###
############


@dataclass
class Data:
    train: Any
    val: Optional[Any]

    @property
    def num_classes(self) -> int:
        return self.train.num_classes

    def fingerprint(self) -> Dict[str, Any]:
        """What identifies the training data (not where it lies): class names and
        images per class of the train and validation subsets."""
        digest = hashlib.sha256()
        for subset in (self.train, self.val):
            if subset is None:
                continue
            counts = np.bincount(subset.labels, minlength=subset.num_classes)
            digest.update(json.dumps([list(subset.class_names), counts.tolist()])
                          .encode())  # fmt: skip
        return {
            "num_classes": self.num_classes,
            "train_images": len(self.train),
            "val_classes": self.val.num_classes if self.val is not None else 0,
            "sha256": digest.hexdigest()[:16],
        }


def build_data(config: TrainConfig) -> Data:
    """Train and validation subsets (class-disjoint), transforms set later."""
    from ..datasets import protocol_of
    from ..datasets.splits import ClassSubset, train_val_split

    full = create_dataset(config, protocol_of(config.dataset).train_split)
    if config.val_fraction > 0:
        train, val = train_val_split(full, config.val_fraction, seed=config.seed)
    else:
        train, val = ClassSubset(full, np.arange(len(full)), split="train"), None
    return Data(train, val)


def loader_settings(config: TrainConfig, device):
    """Workers, pinned memory, persistent workers (``num_workers: auto`` resolved)."""
    from .loading import loader_settings as settings

    return settings(config.num_workers, device)


def cache_training_images(config: TrainConfig, train, interpolation: str, device):
    """``cache_images``: ``train`` (its transform set) decoded once, shrunk to
    ``cache_image_size`` (see pml_soproxy/datasets/cache.py for what that changes).
    mmap: the first process of each node builds the file, the others then map it."""
    from .. import distributed
    from ..datasets.cache import INTERPOLATIONS, DecodedImageCache

    folder = config.cache_dir or os.path.join(config.output_dir, "image_cache")
    if interpolation not in INTERPOLATIONS:  # e.g. timm's "random"
        interpolation = "bicubic"

    def build():
        return DecodedImageCache(
            train,
            short_side=config.cache_image_size,
            mode=config.cache_images,
            folder=folder,
            interpolation=interpolation,
            transform=train.transform,
            num_workers=loader_settings(config, device).num_workers,
            key_extra={"max_image_pixels": config.max_image_pixels},
            progress=distributed.is_main_process(),
        )

    if config.cache_images != "mmap" or distributed.world_size() == 1:
        return build()
    first = os.environ.get("LOCAL_RANK", "0") == "0"
    cache = build() if first else None
    distributed.barrier()
    return cache if first else build()


def iterations_per_epoch(config: TrainConfig, data: Data) -> int:
    return config.iterations_per_epoch or max(1, len(data.train) // config.batch_size)


def check_data_fits(config: TrainConfig, data: Data, world_size: int = 1):
    """What the sampler would otherwise assert: enough classes for one batch."""
    m = config.samples_per_class
    if config.batch_size % (world_size * m):
        raise ConfigError(
            f"batch_size ({config.batch_size}, the global batch) must split into "
            f"{world_size} per-process batches that are multiples of "
            f"samples_per_class ({m})"
        )
    needed = config.batch_size // m
    have = data.num_classes
    if have < needed:
        held_out = (
            f" ({data.val.num_classes} more are held out for validation by "
            f"val_fraction={config.val_fraction})"
            if data.val is not None
            else ""
        )
        raise ConfigError(
            f"batch_size {config.batch_size} with samples_per_class {m} needs "
            f"{needed} classes per batch, but the training classes of "
            f"{config.dataset} number {have}{held_out}; lower batch_size or raise "
            "samples_per_class"
        )


####################
### optimisation ###
####################


def build_optimization(config: TrainConfig, model: Model, loss, iterations: int):
    """AdamW per module (proxies at ``proxy_lr_multiplier`` x lr), per-iteration
    cosine schedules, the trunk frozen during warm-up, a grad scaler for fp16."""

    def adamw(params, lr):
        return torch.optim.AdamW(params, lr=lr, weight_decay=config.weight_decay)

    optimizers = {
        "trunk_optimizer": adamw(model.trunk.parameters(), config.lr),
        "metric_loss_optimizer": adamw(
            loss.parameters(), config.lr * config.proxy_lr_multiplier
        ),
    }
    if config.embedding_size:
        optimizers["embedder_optimizer"] = adamw(model.embedder.parameters(), config.lr)
    total = iterations * config.epochs
    warmup = iterations * min(config.warmup_epochs, config.epochs - 1)

    def cosine(step):
        return 0.5 * (1 + math.cos(math.pi * min(step, total) / total))

    def trunk_factor(step):  # new layers only during warm-up, then cosine
        return 0.0 if step < warmup else cosine(step)

    schedulers = {
        name.replace("_optimizer", "_scheduler_by_iteration"):
        torch.optim.lr_scheduler.LambdaLR(
            opt, trunk_factor if name == "trunk_optimizer" else cosine
        )
        for name, opt in optimizers.items()
    }  # fmt: skip
    device = next(model.trunk.parameters()).device
    scaler = grad_scaler(device, autocast_dtype(device, config.precision))
    return optimizers, schedulers, scaler


def build_sampler(config: TrainConfig, data: Data, iterations: int, world_size: int):
    from .. import distributed
    from .samplers import ResumableMPerClassSampler

    if world_size == 1:
        return ResumableMPerClassSampler(
            data.train.labels,
            m=config.samples_per_class,
            batch_size=config.batch_size,
            length_before_new_iter=iterations * config.batch_size,
        )
    return distributed.DistributedMPerClassSampler(
        data.train.labels,
        m=config.samples_per_class,
        global_batch_size=config.batch_size,
        iterations_per_epoch=iterations,
        seed=config.seed,
    )


def gradient_clippers(config: TrainConfig, model: Model):
    if not config.grad_clip:
        return None
    # gradient-norm clipping of trunk + embedder (Proxy Anchor clips at 10)
    params = [p for m in (model.trunk, model.embedder) for p in m.parameters()]
    return {
        "trunk_grad_clipper": lambda: torch.nn.utils.clip_grad_norm_(
            params, config.grad_clip
        )
    }


##################
### evaluation ###
##################


def build_calculator(config: TrainConfig, device):
    from ..evaluation import RecallAtKCalculator

    return RecallAtKCalculator(recall_at=recall_at(config), device=device)


def build_tester(config: TrainConfig, device, end_of_testing_hook=None):
    from pytorch_metric_learning import testers

    return testers.GlobalEmbeddingSpaceTester(
        batch_size=config.eval_batch_size,
        dataloader_num_workers=loader_settings(config, device).num_workers,
        data_device=device,
        accuracy_calculator=build_calculator(config, device),
        end_of_testing_hook=end_of_testing_hook,
    )


def metrics_of(accuracies: Dict[str, Any]) -> Dict[str, float]:
    return {k.replace("_level0", ""): v for k, v in accuracies.items() if k != "epoch"}


def evaluate_test(
    config: TrainConfig, model: Model, device, keep: Optional[Dict] = None
) -> Dict[str, float]:
    """Test-split Recall@K, MAP@R and R-precision, with the dataset's protocol
    record's query and reference splits (query vs gallery for In-Shop).

    With a dict ``keep``, it receives what figures need without a second pass:
    ``embeddings`` ({split: (normalised embeddings, labels)}), ``datasets``,
    ``query`` and ``references``."""
    from ..datasets import protocol_of

    protocol = protocol_of(config.dataset)  # self-retrieval or query vs gallery
    query, references = protocol.query_split, list(protocol.reference_splits)
    splits = {
        s: create_dataset(config, s, transform=model.eval_transform)
        for s in protocol.test_splits
    }
    tester = build_tester(config, device)
    if keep is not None:
        keep.update(datasets=splits, query=query, references=list(references))
        compute = tester.get_all_embeddings_for_all_splits

        def keeping(*args, **kwargs):  # PML's tester keeps no embeddings itself
            keep["embeddings"] = compute(*args, **kwargs)
            return keep["embeddings"]

        tester.get_all_embeddings_for_all_splits = keeping
    accuracies = tester.test(
        splits,
        0,
        model.trunk_for_eval,
        model.embedder,
        splits_to_eval=[(query, references)],
    )[query]
    return metrics_of(accuracies)


def evaluate_split(tester, name: str, dataset, model: Model, epoch: int) -> Dict:
    return metrics_of(
        tester.test({name: dataset}, epoch, model.trunk_for_eval, model.embedder)[name]
    )
