"""Full fine-tuning ablation of SO on CUB-100, prepared for one GPU.

Every layer of the ImageNet-pretrained EfficientNet-Lite0 trains (BatchNorm in
training mode, the library's drop-connect), with the package's recipe
(``ablation/recipe.py``: config, loss, optimizers and schedules, clipping, M-per-class
sampler, calculator; bf16 autocast on CUDA) and a linear 1280 -> 512 embedder.
Proxy Anchor (so_weight 0) vs PA + SO at one so_weight, the same paired seeds.
Split as in ``ablation_cub100.py``: first 50 species (sorted) seen, 10 of them held
out for validation (``class_disjoint_split`` seed 0), 40 train; last 50 = test,
scored only at the validation-selected and the final epoch.

Images are decoded once (CPU workers), resized so the shorter side is 224 px and
centre-cropped to 224 x 224, and kept on the device as uint8 (~0.9 GB for the 5,902
images). Training views are drawn on the device: RandomResizedCrop (scale 0.35-1,
ratio 3/4-4/3) + horizontal flip through ``torchvision.ops.roi_align``; the eval view
is the central 196 px resized to 224 (the CPU protocol's resize 256 + centre crop
224). Crop boxes come from the run's seeded generator, so runs are paired.

so_weight ``auto`` = the so_weight validation selected in
``results/ablation_cub100_recipe.json`` (or, if that is 0, the best non-zero one on
validation there). Sized for about 8 minutes on one H200: ``--budget-s`` stops
starting new seeds once the next one would not fit; the JSON is written after every
run.

    python benchmarks/ablation_cub100_gpu.py --output "$OUT/ablation_cub100_gpu.json"
    python benchmarks/ablation_cub100_gpu.py --quick --device cpu --output /tmp/g.json
"""

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from ablation.recipe import fit, recipe_config, recipe_summary
from ablation.stats import summarize
from benchutil import meta, write_json

from pml_soproxy.datasets import ImageFolder
from pml_soproxy.datasets.splits import class_disjoint_split

HERE = Path(__file__).resolve().parent
DEFAULT_ROOT = HERE.parents[1] / "shared" / "datasets" / "cub100" / "images"
RECIPE_RESULTS = HERE / "results" / "ablation_cub100_recipe.json"
EVAL_FRACTION = 224 / 256  # centre crop 224 of a 256 px resize


def decode(dataset, indices, size, workers):
    """uint8 ``(N, 3, size, size)``: shorter side resized to ``size``, centre crop."""
    from torchvision import transforms as T

    transform = T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC),
                           T.CenterCrop(size), T.PILToTensor()])  # fmt: skip

    class Images(torch.utils.data.Dataset):
        def __len__(self):
            return len(indices)

        def __getitem__(self, i):
            return transform(dataset.load_image(int(indices[i])).convert("RGB"))

    loader = torch.utils.data.DataLoader(Images(), batch_size=64, num_workers=workers)
    return torch.cat(list(loader))


def pick(labels, max_classes, max_per_class):
    """Indices of at most ``max_per_class`` images of the first ``max_classes``
    classes (all, where both are None)."""
    labels = np.asarray(labels)
    keep = []
    for c in np.unique(labels)[:max_classes]:
        keep += list(np.flatnonzero(labels == c)[:max_per_class])
    return np.asarray(sorted(keep))


def load_data(args, device):
    train = ImageFolder(args.data_root, "train")
    test = ImageFolder(args.data_root, "test")
    seen = pick(train.labels, args.max_classes, args.max_per_class)
    labels = np.asarray(train.labels)[seen]
    train_idx, val_idx = class_disjoint_split(labels, val_fraction=0.2, seed=0)
    test_idx = pick(test.labels, args.max_classes, args.max_per_class)
    start = time.perf_counter()
    images = decode(train, seen, args.image_size, args.workers).to(device)
    test_images = decode(test, test_idx, args.image_size, args.workers).to(device)
    _, remapped = np.unique(labels[train_idx], return_inverse=True)
    return {
        "train": images[torch.as_tensor(train_idx, device=device)],
        "train_labels": remapped,
        "val": (images[torch.as_tensor(val_idx, device=device)],
                torch.as_tensor(labels[val_idx])),
        "test": (test_images, torch.as_tensor(np.asarray(test.labels)[test_idx])),
        "decode_seconds": time.perf_counter() - start,
        "counts": {"train_images": len(train_idx), "val_images": len(val_idx),
                   "test_images": len(test_idx),
                   "train_classes": int(remapped.max()) + 1,
                   "val_classes": len(np.unique(labels[val_idx])),
                   "test_classes": len(np.unique(np.asarray(test.labels)[test_idx])),
                   "image_size": args.image_size},
    }  # fmt: skip


def crop_boxes(n, size, generator, scale=(0.35, 1.0), ratio=(3 / 4, 4 / 3)):
    """RandomResizedCrop boxes ``(n, 4)`` (x0, y0, x1, y1) in a ``size`` square
    (out-of-bounds sides clamped instead of torchvision's retries) and flips."""
    area = torch.empty(n).uniform_(*scale, generator=generator) * size * size
    log_r = torch.empty(n).uniform_(math.log(ratio[0]), math.log(ratio[1]),
                                    generator=generator)  # fmt: skip
    w = torch.sqrt(area * torch.exp(log_r)).clamp(max=size)
    h = torch.sqrt(area / torch.exp(log_r)).clamp(max=size)
    x0 = torch.rand(n, generator=generator) * (size - w)
    y0 = torch.rand(n, generator=generator) * (size - h)
    flips = torch.rand(n, generator=generator) < 0.5
    return torch.stack([x0, y0, x0 + w, y0 + h], 1), flips


def resample(images, boxes, flips, size):
    """Crops of uint8 ``images`` at ``boxes``, resized to ``size``, flipped where
    ``flips``, as TF-scaled floats ``(x - 0.5) / 0.5``."""
    from torchvision.ops import roi_align

    x = images.float() / 255
    index = torch.arange(len(x), dtype=x.dtype, device=x.device)[:, None]
    rois = torch.cat([index, boxes.to(x)], 1)
    out = roi_align(x, rois, output_size=size, sampling_ratio=2, aligned=True)
    out = torch.where(flips.to(x.device)[:, None, None, None], out.flip(3), out)
    return ((out - 0.5) / 0.5).contiguous(memory_format=torch.channels_last)


def eval_view(images, size):
    side = images.shape[-1]
    margin = side * (1 - EVAL_FRACTION) / 2
    box = torch.tensor([[margin, margin, side - margin, side - margin]])
    return resample(images, box.expand(len(images), 4),
                    torch.zeros(len(images), dtype=torch.bool), size)  # fmt: skip


class Lite0(torch.nn.Module):
    """The whole pretrained EfficientNet-Lite0, pooled 1280-d features."""

    def __init__(self):
        super().__init__()
        from ablation_cub100 import load_backbone

        self.net = load_backbone().to(memory_format=torch.channels_last)

    def forward(self, x):
        return self.net.extract_features(x).mean((2, 3))


def choose_so_weight(text):
    if text != "auto":
        return float(text)
    with open(RECIPE_RESULTS) as f:
        selected = summarize(json.load(f))["recipe"]["validation_selected"]
    scores = selected["val_mean_by_so_weight"]
    if selected["so_weight"] != 0:
        return float(selected["so_weight"])
    return float(max((w for w in scores if w), key=lambda w: (scores[w], -w)))


def raw_baseline(data, size, config):
    """Cosine kNN on the pretrained, untrained features (eval view)."""
    from ablation.recipe import embed, evaluate

    from pml_soproxy.training.builder import build_calculator

    model = Lite0().to(data["train"].device).eval()
    calculator = build_calculator(config, data["train"].device)
    return {name: evaluate(calculator, embed(model, inputs, lambda x: eval_view(x, size),
                                             config.eval_batch_size), labels)
            for name, (inputs, labels) in (("val", data["val"]), ("test", data["test"]))}  # fmt: skip


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--data-root", default=str(DEFAULT_ROOT))
    parser.add_argument(
        "--output", default=str(HERE / "results" / "ablation_cub100_gpu.json")
    )
    parser.add_argument("--so-weight", default="auto")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--embedding-size", type=int, default=512)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--budget-s", type=float, default=480.0)
    parser.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    parser.add_argument("--max-classes", type=int, default=None)
    parser.add_argument("--max-per-class", type=int, default=None)
    parser.add_argument("--quick", action="store_true",
                        help="tiny CPU check: few images at 32 px, 1 epoch, 1 seed")  # fmt: skip
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    args.overrides = {}
    if args.quick:
        args.seeds, args.epochs, args.image_size, args.workers = 1, 1, 32, 0
        args.max_classes, args.max_per_class = 8, 4
        args.overrides = {"batch_size": 16, "iterations_per_epoch": 2,
                          "warmup_epochs": 0}  # fmt: skip
        args.so_weight = "1" if args.so_weight == "auto" else args.so_weight
    return args


def main(argv=None):
    args = parse_args(argv)
    start = time.perf_counter()
    device = torch.device(args.device)
    precision = "bf16" if device.type == "cuda" else "fp32"
    so_weight = choose_so_weight(args.so_weight)
    data = load_data(args, device)
    size = args.image_size

    def config_for(seed, w):
        return recipe_config(w, args.embedding_size, args.epochs, seed, device,
                             precision, **args.overrides)  # fmt: skip

    def train_batch(idx, generator):
        boxes, flips = crop_boxes(len(idx), data["train"].shape[-1], generator)
        return resample(data["train"][idx.to(device)], boxes, flips, size)

    first = config_for(0, 0.0)
    config = {"input": f"uint8 images on the device, {size} px", "epochs": args.epochs,
              "lr": first.lr, "proxy_lr": first.lr * first.proxy_lr_multiplier,
              "stage_blocks": "every layer (BatchNorm in training mode)",
              "embedding_size": args.embedding_size, "recipe": recipe_summary(first),
              "sampler": f"M-per-class, M = {first.samples_per_class}",
              "precision": precision, "so_weights": [0.0, so_weight], "seeds": [],
              **data["counts"]}  # fmt: skip
    results = {"baseline_raw_features": raw_baseline(data, size, first),
               "regimes": {"full": {"config": config, "runs": []}}}  # fmt: skip
    runs, per_seed = results["regimes"]["full"]["runs"], 0.0
    for seed in range(args.seeds):
        elapsed = time.perf_counter() - start
        if seed and elapsed + per_seed > args.budget_s:
            print(f"stopping before seed {seed}: {elapsed:.0f} s used", flush=True)
            break
        seed_start = time.perf_counter()
        for w in (0.0, so_weight):
            runs.append(fit(config_for(seed, w), Lite0, 1280, data["train_labels"],
                            train_batch, data["val"], data["test"],
                            prepare=lambda x: eval_view(x, size),
                            log=print if args.verbose else None))  # fmt: skip
            print(f"seed {seed} so_weight {w:g}: test R@1 selected "
                  f"{runs[-1]['test_selected']['recall_at_1']:.4f} ({runs[-1]['seconds']:.0f} s)",
                  flush=True)  # fmt: skip
        per_seed = max(per_seed, time.perf_counter() - seed_start)
        config["seeds"].append(seed)
        results["meta"] = meta(args, quick=args.quick, decode_seconds=data["decode_seconds"],
                               total_seconds=time.perf_counter() - start)  # fmt: skip
        summarize(results)
        write_json(args.output, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
