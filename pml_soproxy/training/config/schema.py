"""The schema: every config key of the native recipe, with its default, its type,
what it accepts (a check and the sentence that says it) and its help text.

``TrainConfig`` is the single source of these facts; the rest of the package
(:mod:`.values`, :mod:`.files`, :mod:`.layers`, :mod:`.flags`) reads them from here.
"""

import math
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, Dict, List, Optional

from ...datasets.base import DEFAULT_MAX_IMAGE_PIXELS
from ...datasets.cache import CACHE_MODES
from ...datasets.registry import DATASETS

#: the registry's names, in its order (each reader's protocol record names it)
DATASET_NAMES = tuple(DATASETS)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
#: the PML losses with class weights that ``loss`` names, and for each the config
#: keys of its hyper-parameters -> the PML constructor argument they set
LOSS_OPTIONS = {
    "proxy_anchor": {"margin": "margin", "alpha": "alpha"},
    "proxy_nca": {"proxy_nca_softmax_scale": "softmax_scale"},
    "normalized_softmax": {"normalized_softmax_temperature": "temperature"},
    "soft_triple": {
        "soft_triple_centers_per_class": "centers_per_class",
        "soft_triple_la": "la",
        "soft_triple_gamma": "gamma",
        "soft_triple_margin": "margin",
    },
    "arcface": {"arcface_margin": "margin", "arcface_scale": "scale"},
    "cosface": {"cosface_margin": "margin", "cosface_scale": "scale"},
}
LOSS_NAMES = tuple(LOSS_OPTIONS)
#: a value that is "auto" (resolved where it is used) or an integer
AutoInt = typing.Union[int, str]
#: keys accepted for backward compatibility: old name -> (new name, advice)
DEPRECATED_KEYS = {
    "checkpoint_path": (
        "pretrained_weights",
        "'checkpoint_path' (--checkpoint-path) is deprecated: it names the trunk's "
        "pretrained weights, now 'pretrained_weights' (--pretrained-weights)",
    )
}


class ConfigError(ValueError):
    """A config value, file or combination of values that cannot be used."""


def option(default, help, check=None, allowed="", flag=True, metavar=None):
    """A schema field: default, help text, a check ``value -> bool`` with the
    sentence that says what is allowed, and whether a command-line flag exists."""
    kwargs = {"default_factory": default} if callable(default) else {"default": default}
    metadata = dict(help=help, check=check, allowed=allowed, flag=flag, metavar=metavar)
    return field(metadata=metadata, **kwargs)


def choice(default, help, names, **kwargs):
    """A schema field whose value is one of ``names``."""
    return option(
        default, help, lambda v: v in names, f"one of {', '.join(names)}", **kwargs
    )


def _int_at_least(low):
    return lambda v: v >= low


def _finite_at_least(low, strict=False):
    return lambda v: math.isfinite(v) and (v > low if strict else v >= low)


# the common checks, each with the sentence that says what it allows
POSITIVE = (_finite_at_least(0, True), "a finite number > 0")
AT_LEAST_0 = (_finite_at_least(0), "a finite number >= 0")
INT_0 = (_int_at_least(0), "an integer >= 0")
INT_1 = (_int_at_least(1), "an integer >= 1")


def _device_ok(value: str) -> bool:
    import torch

    try:
        torch.device(value if value != "auto" else "cpu")
    except (RuntimeError, ValueError):
        return False
    return True


@dataclass
class TrainConfig:
    dataset: str = choice("digits", "dataset name", DATASET_NAMES, flag=False)
    data_root: Optional[str] = option(
        None, "dataset folder (or its parent); not needed for digits"
    )
    output_dir: Optional[str] = option(
        None, "run folder: checkpoint, weights, logs, results.json (runs/<dataset>)"
    )
    model_name: str = option(
        "deit_small_distilled_patch16_224", "timm model name of the trunk"
    )
    pretrained_weights: Optional[str] = option(
        None,
        "the trunk's starting weights, a local .pth/.safetensors file (default: the "
        "model's ImageNet weights from timm's cache or hub)",
        metavar="FILE",
    )
    random_init: bool = option(
        False, "start the trunk from random weights instead of pretrained ones"
    )
    trunk_kwargs: Dict[str, Any] = option(
        dict, "timm.create_model overrides, a YAML mapping", metavar="YAML"
    )
    augment: Dict[str, Any] = option(
        dict, "timm create_transform overrides for training, a YAML mapping",
        metavar="YAML",
    )  # fmt: skip
    embedding_size: int = option(
        0,
        "size of a linear embedder on the trunk; 0 = the trunk feature is the "
        "embedding",
        *INT_0,
    )
    loss: str = choice(
        "proxy_anchor", "the PML loss whose class weights (proxies) SO regularises",
        LOSS_NAMES,
    )  # fmt: skip
    # 0 by default: in the CUB-100 ablation (benchmarks/README.md, section 5) the
    # validation split selects 0 over 1, 3, 10, 30 in the package's own recipe
    so_weight: float = option(
        0.0,
        "weight of the soft-orthogonality term on the loss's class weights (0 = "
        "the plain PML loss, the default: see the README's verdicts)",
        *AT_LEAST_0,
    )
    margin: float = option(0.1, "Proxy Anchor margin", *AT_LEAST_0)
    alpha: float = option(32.0, "Proxy Anchor scale", *POSITIVE)
    # the other losses' hyper-parameters; defaults are PML's (LOSS_OPTIONS maps them)
    proxy_nca_softmax_scale: float = option(1.0, "ProxyNCA softmax scale", *POSITIVE)
    normalized_softmax_temperature: float = option(
        0.05, "NormalizedSoftmax temperature", *POSITIVE
    )
    soft_triple_centers_per_class: int = option(
        10, "SoftTriple centers per class", *INT_1
    )
    soft_triple_la: float = option(20.0, "SoftTriple scale lambda", *POSITIVE)
    soft_triple_gamma: float = option(
        0.1, "SoftTriple softmax temperature gamma over a class's centers", *POSITIVE
    )
    soft_triple_margin: float = option(0.01, "SoftTriple margin", *AT_LEAST_0)
    arcface_margin: float = option(
        28.6, "ArcFace additive angular margin, in degrees", *AT_LEAST_0
    )
    arcface_scale: float = option(64.0, "ArcFace scale", *POSITIVE)
    cosface_margin: float = option(0.35, "CosFace additive cosine margin", *AT_LEAST_0)
    cosface_scale: float = option(64.0, "CosFace scale", *POSITIVE)
    epochs: int = option(40, "training epochs", *INT_1)
    batch_size: int = option(120, "global batch size", *INT_1)
    samples_per_class: int = option(4, "images per class in a batch (M)", *INT_1)
    iterations_per_epoch: Optional[int] = option(
        None,
        "iterations per epoch (default: training images // batch size)",
        _int_at_least(1),
        "an integer >= 1, or null for one pass",
    )
    lr: float = option(1e-4, "base learning rate", *POSITIVE)
    proxy_lr_multiplier: float = option(
        100.0, "proxies' learning rate / base learning rate", *POSITIVE
    )
    weight_decay: float = option(1e-4, "AdamW weight decay", *AT_LEAST_0)
    warmup_epochs: int = option(
        1, "epochs that train only the new layers (embedder, proxies)", *INT_0
    )
    grad_clip: float = option(
        10.0, "gradient-norm clipping of trunk + embedder (0 = off)", *AT_LEAST_0
    )
    val_fraction: float = option(
        0.2,
        "share of training classes held out for model selection (0 = last epoch)",
        lambda v: 0 <= v < 1,
        "a number in [0, 1)",
    )
    selection_metric: str = option(
        "precision_at_1", "validation metric that selects the epoch (= Recall@1)"
    )
    patience: Optional[int] = option(
        None,
        "stop after this many epochs without a better validation metric",
        _int_at_least(0),
        "an integer >= 0, or null",
    )
    recall_at: Optional[List[int]] = option(
        None,
        "Recall@K cut-offs (default: the dataset's standard K set)",
        lambda v: len(v) > 0 and all(k >= 1 for k in v),
        "a non-empty list of integers >= 1, or null",
    )
    eval_batch_size: int = option(128, "batch size of evaluation", *INT_1)
    num_workers: AutoInt = option(
        "auto",
        "data loader worker processes; auto = this process's CPUs less one, "
        "capped (training/loading.py; --print-config shows it); the augmentations "
        "do not depend on it",
        lambda v: v == "auto" or v >= 0,
        "auto or an integer >= 0",
        metavar="N|auto",
    )
    cache_images: str = choice(
        "none",
        "keep the training images decoded and shrunk to cache_image_size in "
        "memory or in a memory-mapped file (cache_dir); the random augmentation "
        "still runs at every draw",
        CACHE_MODES,
    )
    cache_image_size: int = option(
        256,
        "shorter side in pixels of cached training images (larger ones are "
        "shrunk to it, smaller ones kept as they are)",
        *INT_1,
    )
    cache_dir: Optional[str] = option(
        None,
        "folder of the mmap image cache (default <output_dir>/image_cache); runs "
        "over the same images may share one",
        metavar="DIR",
    )
    device: str = option("auto", "auto, cpu, cuda, cuda:1 ...", _device_ok,
                         "auto, cpu, cuda or cuda:N")  # fmt: skip
    precision: str = choice("auto", "trunk precision", PRECISIONS)
    seed: int = option(
        0, "random seed", lambda v: 0 <= v < 2**32, "an integer in [0, 2**32)"
    )
    max_image_pixels: Optional[int] = option(
        DEFAULT_MAX_IMAGE_PIXELS,
        "refuse images with more pixels than this (decompression-bomb guard)",
        _int_at_least(1),
        "an integer >= 1, or null for no limit",
    )
    skip_bad_images: bool = option(
        False,
        "replace unreadable training images by another image of their class and "
        "list them in the run folder, instead of stopping",
    )
    log_every: int = option(
        10,
        "read the loss from the device every N iterations (progress bar, NaN check)",
        *INT_1,
    )
    figures: bool = option(
        True,
        "after the test, write figures/ in the run folder: a retrieval grid of test "
        "queries and an embedding map of the test set",
    )

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


SCHEMA = {f.name: f for f in fields(TrainConfig)}


def default_value(f) -> Any:
    return f.default_factory() if f.default is MISSING else f.default


def flag_name(key: str) -> str:
    return "--" + key.replace("_", "-")
