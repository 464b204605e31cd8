"""One Proxy Anchor (+ SO) run through the package recipe's public pieces.

The hyper-parameters come from ``pml_soproxy.training.config`` (the schema's defaults
plus the ``cub200`` layer): base lr, proxy lr multiplier, AdamW weight decay, warm-up
epochs, gradient clipping, batch size and samples per class are the package's, never
numbers typed here; a run sets only its budget (epochs), embedding size, so_weight
and seed. Loss, optimizers with their per-iteration schedules, gradient clipper,
M-per-class sampler and calculator come from ``pml_soproxy.training.builder``.

The package's trainer (PML's ``MetricLossOnly``) is not used: it draws images
through a DataLoader, while the CPU ablation feeds cached activations (a view drawn
per image) and the GPU one augments uint8 images already on the GPU, so ``fit`` is
the trainer's step (zero grads, backward, clip, step, schedule) written out.
"""

import copy
import time
from typing import Callable, Dict, Tuple

import numpy as np
import torch

from pml_soproxy.device import AutocastTrunk, autocast_dtype
from pml_soproxy.report import proxy_cosine_stats
from pml_soproxy.training.builder import (
    Model,
    build_calculator,
    build_loss,
    build_optimization,
    build_sampler,
    gradient_clippers,
    iterations_per_epoch,
)
from pml_soproxy.training.checkpoints import seed_everything
from pml_soproxy.training.config import load_config

from .stats import METRICS, run_record

#: the recipe's keys recorded with every result (their values are the package's)
RECIPE_KEYS = (
    "lr",
    "proxy_lr_multiplier",
    "weight_decay",
    "warmup_epochs",
    "grad_clip",
    "batch_size",
    "samples_per_class",
    "margin",
    "alpha",
)


def recipe_config(so_weight, embedding_size, epochs, seed, device="cpu",
                  precision="fp32", **overrides):  # fmt: skip
    """The package's ``cub200`` config with only the run's budget and model set
    (``overrides``: other keys, for the tiny ``--quick`` checks only)."""
    values = {
        "so_weight": float(so_weight),
        "embedding_size": int(embedding_size),
        "epochs": int(epochs),
        "seed": int(seed),
        "device": str(device),
        "precision": precision,
    }
    return load_config("cub200", dict(values, **overrides))


def recipe_summary(config) -> Dict[str, float]:
    return {k: getattr(config, k) for k in RECIPE_KEYS}


def proxy_stats(proxies: torch.Tensor) -> Dict[str, float]:
    """``proxy_cosine_stats`` plus the signed mean cosine between distinct proxies
    (the sum over i != j of cos_ij is ||sum_i u_i||^2 - C for unit rows u_i)."""
    stats = proxy_cosine_stats(proxies)
    unit = torch.nn.functional.normalize(proxies.detach().double().cpu(), dim=1)
    c = len(unit)
    signed = (unit.sum(0).pow(2).sum().item() - c) / max(c * (c - 1), 1)
    return dict(stats, mean_cos=signed)


class _TrainingSet:
    """What the builder's sampler and iteration count read of a training set
    (cached activations have no dataset object)."""

    def __init__(self, labels):
        self.labels = np.asarray(labels)

    def __len__(self):
        return len(self.labels)


class _Data:
    def __init__(self, labels):
        self.train = _TrainingSet(labels)


def embed(model, inputs, prepare, batch_size):
    with torch.no_grad():
        return torch.cat(
            [
                model(prepare(inputs[s : s + batch_size])).float()
                for s in range(0, len(inputs), batch_size)
            ]
        )


def evaluate(calculator, embeddings, labels) -> Dict[str, float]:
    accuracies = calculator.get_accuracy(embeddings, labels)
    return {k: float(accuracies[k]) for k in METRICS}


class Parts:
    """A run's model, loss and optimisation, built in a fixed order after seeding
    (trunk, embedder, proxies), so one seed gives one initialisation."""

    def __init__(self, config, make_trunk, feature_size: int, labels):
        self.config = config
        self.device = device = torch.device(config.device)
        seed_everything(config.seed)
        trunk = make_trunk().to(device)
        embedder = torch.nn.Linear(feature_size, config.embedding_size).to(device)
        amp = autocast_dtype(device, config.precision)
        model = Model(trunk, embedder, AutocastTrunk(trunk, device.type, amp), None,
                      None, config.embedding_size)  # fmt: skip
        self.net = torch.nn.Sequential(model.trunk_for_eval, embedder)
        data = _Data(labels)
        self.loss = build_loss(config, len(np.unique(data.train.labels)),
                               config.embedding_size, device)  # fmt: skip
        self.iterations = iterations_per_epoch(config, data)
        self.optimizers, self.schedulers, scaler = build_optimization(
            config, model, self.loss, self.iterations
        )
        if scaler is not None:
            raise ValueError("fp16 needs a grad scaler: run fp32 or bf16")
        self.clippers = gradient_clippers(config, model) or {}
        self.sampler = build_sampler(config, data, self.iterations, world_size=1)
        self.calculator = build_calculator(config, device)
        self.labels = torch.as_tensor(data.train.labels, dtype=torch.long)

    def train_epoch(self, train_batch, generator) -> float:
        """One epoch of the trainer's step; the mean loss."""
        self.net.train()
        order = torch.as_tensor(list(iter(self.sampler))).view(self.iterations, -1)
        losses = []
        for idx in order:
            out = self.net(train_batch(idx, generator))
            loss = self.loss(out, self.labels[idx].to(self.device))
            for optimizer in self.optimizers.values():
                optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for clip in self.clippers.values():
                clip()
            for optimizer in self.optimizers.values():
                optimizer.step()
            for scheduler in self.schedulers.values():
                scheduler.step()
            losses.append(loss.detach())
        return float(torch.stack(losses).mean())

    def score(self, split, prepare) -> Dict[str, float]:
        self.net.eval()
        inputs, labels = split
        embeddings = embed(self.net, inputs, prepare, self.config.eval_batch_size)
        return evaluate(self.calculator, embeddings, labels)


def fit(
    config,
    make_trunk: Callable[[], torch.nn.Module],
    feature_size: int,
    labels,
    train_batch: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
    val: Tuple[torch.Tensor, torch.Tensor],
    test: Tuple[torch.Tensor, torch.Tensor],
    prepare: Callable[[torch.Tensor], torch.Tensor] = lambda x: x.float(),
    log: Callable[[str], None] = None,
) -> Dict:
    """Train ``make_trunk()`` + a linear embedder + the recipe's loss; score the
    validation split every epoch and the test split at the validation-selected and
    the final epoch. Same seed = same initialisation, batches and views.

    ``train_batch(indices, generator)`` returns the trunk inputs of those training
    items (drawing a view or an augmentation from ``generator``); ``prepare`` turns
    a chunk of stored ``val``/``test`` inputs into trunk inputs.
    """
    parts = Parts(config, make_trunk, feature_size, labels)
    generator = torch.Generator().manual_seed(10_000 + config.seed)
    history, best = [], {"val_r1": -1.0}
    start = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        loss = parts.train_epoch(train_batch, generator)
        scores = parts.score(val, prepare)
        stats = proxy_stats(parts.loss.proxies)
        stats.pop("histogram")
        history.append({"epoch": epoch, "loss": loss, "val": scores,
                        **{f"proxy_{k}": v for k, v in stats.items()}})  # fmt: skip
        if scores["recall_at_1"] > best["val_r1"]:
            state = copy.deepcopy(parts.net.state_dict())
            best = {"val_r1": scores["recall_at_1"], "epoch": epoch, "state": state,
                    "proxy": stats}  # fmt: skip
        if log:
            log(f"  so {config.so_weight:g} seed {config.seed} epoch {epoch}: loss "
                f"{loss:.3f} val R@1 {scores['recall_at_1']:.4f} proxy |cos| "
                f"{stats['mean_abs_cos']:.3f}/{stats['max_abs_cos']:.3f} "
                f"cos {stats['mean_cos']:+.4f}")  # fmt: skip
    seconds = time.perf_counter() - start
    final = proxy_stats(parts.loss.proxies)
    test_final = parts.score(test, prepare)
    parts.net.load_state_dict(best["state"])
    return run_record(config.seed, config.so_weight, seconds, best, history,
                      parts.score(test, prepare), test_final, final)  # fmt: skip
