"""The model side of a run, built from its config: where the trunk's starting
weights come from, trunk + embedder + transforms, the loss (with SO in PML's
``weight_regularizer`` slot), the loss's class weights and strict state loading.
Re-exported by :mod:`.builder`, the one door ``train`` and ``evaluate`` build
through."""

import os
from dataclasses import dataclass
from typing import Any, Dict

import torch

from ..device import AutocastTrunk, autocast_dtype
from .checkpoints import sha256_of
from .config import ConfigError, TrainConfig


def resolve_pretrained(config: TrainConfig) -> Dict[str, Any]:
    """Where the trunk's starting weights come from, found before any work:
    ``{"kind": "file" | "timm cache" | "timm hub" | "random init", "path"}``."""
    from .. import trunks

    if config.random_init:
        return {"kind": "random init", "path": None}
    if config.pretrained_weights is not None:
        path = os.path.abspath(os.path.expanduser(config.pretrained_weights))
        return {"kind": "file", "path": path, "sha256": sha256_of(path)}
    cfg = trunks.pretrained_cfg(config.model_name)
    cached = trunks.find_cached_weights(cfg)
    kind = "timm cache"
    if cached is None:
        try:
            cached = trunks.download_weights(config.model_name, cfg)
        except RuntimeError:
            raise ConfigError(
                f"the ImageNet weights of {config.model_name} are not in timm's cache "
                "and cannot be downloaded here: pass --pretrained-weights FILE (a "
                ".pth or .safetensors file of the trunk's weights), or --random-init "
                "to train from random weights (far worse results)"
            ) from None
        kind = "timm hub"
    return {"kind": kind, "path": cached, "sha256": sha256_of(cached)}


@dataclass
class Model:
    trunk: torch.nn.Module
    embedder: torch.nn.Module
    trunk_for_eval: torch.nn.Module  # the trunk under autocast, float32 out
    train_transform: Any
    eval_transform: Any
    embedding_size: int


def build_model(
    config: TrainConfig, pretrained: Dict[str, Any], device: torch.device
) -> Model:
    import timm.data

    from ..trunks import create_trunk, get_transforms

    try:
        trunk = create_trunk(
            config.model_name,
            pretrained=pretrained["kind"] != "random init",
            checkpoint_path=pretrained["path"],
            **config.trunk_kwargs,
        )
    except TypeError as err:  # timm's reaction to an unknown trunk_kwargs entry
        raise ConfigError(
            f"config key 'trunk_kwargs' = {config.trunk_kwargs!r} does not fit "
            f"{config.model_name}: {err}"
        ) from None
    try:
        train_transform = timm.data.create_transform(
            **trunk.data_config, is_training=True, **config.augment
        )
    except TypeError as err:
        raise ConfigError(
            f"config key 'augment' = {config.augment!r}: {err} (the keys are "
            "timm.data.create_transform's arguments)"
        ) from None
    if config.embedding_size:
        embedder = torch.nn.Linear(trunk.output_size, config.embedding_size)
        embedding_size = config.embedding_size
    else:
        embedder, embedding_size = torch.nn.Identity(), trunk.output_size
    trunk.to(device)
    embedder.to(device)
    amp = autocast_dtype(device, config.precision)
    return Model(
        trunk,
        embedder,
        AutocastTrunk(trunk, device.type, amp),
        train_transform,
        get_transforms(trunk, train=False),
        embedding_size,
    )


def _pml_loss_class(name: str):
    """The PML class of a ``loss`` name (every one a ``WeightRegularizerMixin``)."""
    from pytorch_metric_learning import losses

    return {
        "proxy_nca": losses.ProxyNCALoss,
        "normalized_softmax": losses.NormalizedSoftmaxLoss,
        "soft_triple": losses.SoftTripleLoss,
        "arcface": losses.ArcFaceLoss,
        "cosface": losses.CosFaceLoss,
    }[name]


def build_loss(config: TrainConfig, num_classes: int, embedding_size: int, device):
    """``config.loss`` with its hyper-parameters (``LOSS_OPTIONS``) and, when
    ``so_weight`` > 0, SO in PML's ``weight_regularizer`` slot with that weight.
    With ``so_weight`` 0 it is the unmodified PML loss. Proxy Anchor is our
    ``SoftOrthogonalProxyAnchorLoss`` (computed in float32, label checks), which is
    PML's ``ProxyAnchorLoss`` at ``so_weight`` 0."""
    from ..losses import SoftOrthogonalProxyAnchorLoss
    from ..regularizers import SoftOrthogonalityRegularizer
    from .config import LOSS_OPTIONS

    options = LOSS_OPTIONS[config.loss]
    kwargs = {arg: getattr(config, key) for key, arg in options.items()}
    if config.loss == "proxy_anchor":
        loss = SoftOrthogonalProxyAnchorLoss(
            num_classes, embedding_size, so_weight=config.so_weight, **kwargs
        )
        return loss.to(device)
    if config.so_weight:
        kwargs.update(weight_regularizer=SoftOrthogonalityRegularizer(),
                      weight_reg_weight=config.so_weight)  # fmt: skip
    loss = _pml_loss_class(config.loss)(
        num_classes=num_classes, embedding_size=embedding_size, **kwargs
    )
    return loss.to(device)


def class_weights(loss: torch.nn.Module) -> torch.Tensor:
    """The loss's class weights (proxies) as rows, ``(C, D)``, or ``(C x centers,
    D)`` for SoftTriple: the matrix PML hands to the weight regulariser (ProxyNCA
    and Proxy Anchor keep ``proxies`` as ``(C, D)``; NormalizedSoftmax, ArcFace and
    CosFace keep ``W`` as ``(D, C)``, SoftTriple ``fc`` as ``(D, C x centers)``, and
    pass the transpose)."""
    from pytorch_metric_learning.losses import SoftTripleLoss

    if isinstance(loss, SoftTripleLoss):
        return loss.fc.t()
    if hasattr(loss, "proxies"):
        return loss.proxies
    return loss.W.t()


def load_state(module: torch.nn.Module, state: Dict, path: str, part: str):
    """``load_state_dict(strict=True)``, its error summarised with the file named."""
    from ..trunks import summarise_load_error

    try:
        module.load_state_dict(state)
    except RuntimeError as err:
        raise ConfigError(
            f"{path}: the saved {part} does not fit the model its config describes: "
            f"{summarise_load_error(str(err))}"
        ) from None
