"""The trunk factory: :class:`Trunk`, ``create_trunk`` / ``deit_trunk`` and the
image transforms matching a trunk.

Everything a trunk needs to know about its model comes from timm: the model
name and its pretrained cfg (``timm.models.get_pretrained_cfg``), the model
(``timm.create_model``), and mean / std / input size / crop
(``timm.data.resolve_model_data_config``). Where the weights come from is
:mod:`.weights`' job.
"""

import difflib
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

import timm
import timm.data
import torch
from timm.models import get_pretrained_cfg
from torch import nn

from .weights import (
    PathLike,
    create_from_checkpoint,
    download_weights,
    find_cached_weights,
)

DEFAULT_DEIT = "deit_small_distilled_patch16_224"


class Trunk(nn.Module):
    """A timm backbone without classifier: images -> pooled features.

    Attributes:
        model: the timm model (created with ``num_classes=0``).
        output_size: feature dimension of the output.
        data_config: timm data config (input_size, mean, std, interpolation,
            crop_pct, crop_mode) the transforms are built from.
    """

    def __init__(self, model: nn.Module, data_config: Mapping[str, Any]) -> None:
        super().__init__()
        self.model = model
        # head_hidden_size is what num_classes=0 returns; it equals num_features
        # for ViT/DeiT, but differs for e.g. MobileNetV3 (conv head).
        size = getattr(model, "head_hidden_size", None) or model.num_features
        self.output_size = int(size)
        self.data_config: Dict[str, Any] = dict(data_config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def transforms(self, train: bool = False) -> Callable:
        """Image transform matching this trunk (see :func:`get_transforms`)."""
        return get_transforms(self, train=train)


def get_transforms(trunk: Union[Trunk, Mapping[str, Any]], train: bool) -> Callable:
    """timm transform (PIL image -> normalised tensor) for a trunk or data config."""
    data_config = trunk.data_config if isinstance(trunk, Trunk) else trunk
    return timm.data.create_transform(**data_config, is_training=train)


def create_transforms(
    trunk: Union[Trunk, Mapping[str, Any]],
) -> Tuple[Callable, Callable]:
    """Return ``(train_transform, eval_transform)`` matching the trunk."""
    return get_transforms(trunk, train=True), get_transforms(trunk, train=False)


def deit_trunk(
    model_name: str = DEFAULT_DEIT,
    pretrained: bool = True,
    checkpoint_path: Optional[PathLike] = None,
    **timm_kwargs: Any,
) -> Trunk:
    """DeiT trunk (default: DeiT-S distilled); see :func:`create_trunk`."""
    return create_trunk(
        model_name,
        pretrained=pretrained,
        checkpoint_path=checkpoint_path,
        **timm_kwargs,
    )


def create_trunk(
    model_name: str,
    pretrained: bool = True,
    checkpoint_path: Optional[PathLike] = None,
    **timm_kwargs: Any,
) -> Trunk:
    """Build a :class:`Trunk` from any timm model name.

    Args:
        model_name: timm model name, optionally with a pretrained tag
            (``"deit_small_patch16_224.fb_in1k"``).
        pretrained: load pretrained weights, from ``checkpoint_path`` if given,
            else from the local HF-hub / torch.hub cache, else (only when
            online, after a 3 s reachability probe) downloaded into it. Any
            failure is one ``RuntimeError`` naming ``checkpoint_path``.
        checkpoint_path: local ``.pth``/``.pt``/``.bin`` (plain state dict,
            ``{"model": ...}``, ``{"state_dict": ...}``, or a saved ``Trunk``)
            or ``.safetensors`` file. Classifier heads are dropped; position
            embeddings are resampled by timm for other image/patch sizes.
        **timm_kwargs: passed to ``timm.create_model`` (``img_size``,
            ``depth``, ``embed_dim``, ``drop_path_rate``, ...).
    """
    cfg = pretrained_cfg(model_name)
    if timm_kwargs.pop("num_classes", 0) != 0:
        raise ValueError("A trunk has no classifier: num_classes is fixed to 0.")
    if checkpoint_path is not None and not pretrained:
        raise ValueError("checkpoint_path was given with pretrained=False.")

    if pretrained and checkpoint_path is None:
        checkpoint_path = find_cached_weights(cfg) or download_weights(model_name, cfg)
    if pretrained:
        model = create_from_checkpoint(model_name, cfg, checkpoint_path, timm_kwargs)
    else:
        model = timm.create_model(
            model_name, pretrained=False, num_classes=0, **timm_kwargs
        )

    data_config = timm.data.resolve_model_data_config(
        model, args=_data_config_args(timm_kwargs)
    )
    return Trunk(model, data_config)


def pretrained_cfg(model_name: str) -> Any:
    """timm's PretrainedCfg for ``model_name``; ValueError if timm lacks it."""
    if not isinstance(model_name, str) or not timm.is_model(model_name):
        family = timm.list_models(str(model_name).split("_")[0] + "*")
        close = difflib.get_close_matches(
            str(model_name), family or timm.list_models(), n=3, cutoff=0.5
        )
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(
            f"{model_name!r} is not a timm model name; see timm.list_models('deit*') "
            f"for DeiT variants.{hint}"
        )
    try:
        cfg = get_pretrained_cfg(model_name)
    except RuntimeError as err:  # e.g. an unknown pretrained tag
        raise ValueError(f"{model_name!r}: {err}") from None
    if cfg is None:  # registered model without any pretrained cfg
        cfg = timm.models.PretrainedCfg()
    return cfg


def _data_config_args(timm_kwargs: Mapping[str, Any]) -> Dict[str, Any]:
    """Input-size overrides for timm's data-config resolution.

    timm resolves the data config from the *pretrained* cfg (224 for DeiT), so
    an ``img_size``/``in_chans`` given to the model must be passed on, as
    timm's own train script does.
    """
    in_chans = timm_kwargs.get("in_chans", 3)
    args: Dict[str, Any] = {"in_chans": in_chans}
    img_size = timm_kwargs.get("img_size")
    if isinstance(img_size, int):
        args["img_size"] = img_size
    elif img_size is not None:
        height, width = img_size
        args["input_size"] = (in_chans, int(height), int(width))
    return args
