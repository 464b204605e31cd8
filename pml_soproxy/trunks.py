"""Image trunks (DeiT by default) built on timm, for metric learning.

A trunk maps images ``(N, 3, H, W)`` to the pooled backbone feature
``(N, trunk.output_size)``; the embedder / loss sit on top of it.

>>> trunk = deit_trunk(checkpoint_path="deit_small_distilled_patch16_224.pth")
>>> train_tf, eval_tf = create_transforms(trunk)

Weights are only ever read from local files: ``checkpoint_path`` or the local
Hugging Face / torch.hub cache that timm itself downloads into.  Device
placement is left to the caller.
"""

import difflib
import errno
import os
import re
import socket
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union
from urllib.parse import urlparse

import timm
import timm.data
import torch
from timm.models import get_pretrained_cfg
from timm.models import load_state_dict as timm_load_state_dict
from torch import nn

__all__ = [
    "DEFAULT_DEIT",
    "Trunk",
    "create_trunk",
    "deit_trunk",
    "get_transforms",
    "create_transforms",
]

DEFAULT_DEIT = "deit_small_distilled_patch16_224"

PathLike = Union[str, "os.PathLike[str]"]

# Weight files timm reads from a Hugging Face hub repo, safetensors first
# (see timm.models._hub.load_state_dict_from_hf).
_HF_SAFE_ALTERNATIVES = {
    "pytorch_model.bin": "model.safetensors",
    "open_clip_pytorch_model.bin": "open_clip_model.safetensors",
}
_HF_DEFAULT_FILE = "pytorch_model.bin"
_TRUE_STRINGS = {"1", "on", "yes", "true"}


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
    cfg = _pretrained_cfg(model_name)
    if timm_kwargs.pop("num_classes", 0) != 0:
        raise ValueError("A trunk has no classifier: num_classes is fixed to 0.")
    if checkpoint_path is not None and not pretrained:
        raise ValueError("checkpoint_path was given with pretrained=False.")

    if pretrained and checkpoint_path is None:
        checkpoint_path = _find_cached_weights(cfg) or _download_weights(
            model_name, cfg
        )
    if pretrained:
        model = _create_from_checkpoint(model_name, cfg, checkpoint_path, timm_kwargs)
    else:
        model = timm.create_model(
            model_name, pretrained=False, num_classes=0, **timm_kwargs
        )

    data_config = timm.data.resolve_model_data_config(
        model, args=_data_config_args(timm_kwargs)
    )
    return Trunk(model, data_config)


###############################
### model names and configs ###
###############################


def _pretrained_cfg(model_name: str) -> Any:
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


#########################
### cached / download ###
#########################


def _not_cached_error(model_name: str) -> RuntimeError:
    return RuntimeError(
        f"Pretrained weights for {model_name!r} are not in the local cache and "
        "cannot be downloaded here: pass checkpoint_path=<path to a .pth or "
        ".safetensors file>, or pretrained=False."
    )


def _hf_offline() -> bool:
    """HF_HUB_OFFLINE, read now (huggingface_hub reads it at import time)."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUE_STRINGS:
            return True
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _hf_cache_dir() -> str:
    """HF hub cache dir, honouring HF_HUB_CACHE / HF_HOME set after import."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def _hf_candidates(cfg: Any) -> Tuple[str, Optional[str], List[str]]:
    """(repo_id, revision, file names in timm's order) for an hf-hub cfg."""
    repo_id, _, revision = cfg.hf_hub_id.partition("@")
    filename = cfg.hf_hub_filename or _HF_DEFAULT_FILE
    names = [filename]
    if filename in _HF_SAFE_ALTERNATIVES:
        names.insert(0, _HF_SAFE_ALTERNATIVES[filename])
    return repo_id, revision or None, names


def _torch_hub_file(url: str) -> Path:
    """Where torch.hub / timm cache a weight URL."""
    name = os.path.basename(urlparse(url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def _find_cached_weights(cfg: Any) -> Optional[str]:
    """Path of the model's pretrained weights in a local cache, if present."""
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo_id, revision, names = _hf_candidates(cfg)
        for name in names:
            hit = try_to_load_from_cache(
                repo_id, name, cache_dir=_hf_cache_dir(), revision=revision
            )
            if isinstance(hit, str):
                return hit
    if cfg.url and not cfg.custom_load:  # custom_load: .npz etc., not handled here
        path = _torch_hub_file(cfg.url)
        if path.is_file():
            return str(path)
    if cfg.file and Path(cfg.file).is_file():
        return str(cfg.file)
    return None


def _reachable(url: str, timeout: float = 3.0) -> bool:
    """Can a TCP connection to the URL's host be opened within ``timeout`` s?

    huggingface_hub retries refused connections with back-off (~30 s per
    file), so without this probe an offline machine would stall for a minute.
    """
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def _download_weights(model_name: str, cfg: Any) -> str:
    """Download into timm's usual cache; any failure -> one clear RuntimeError."""
    if not (cfg.hf_hub_id or (cfg.url and not cfg.custom_load)):
        raise RuntimeError(
            f"timm has no pretrained weights for {model_name!r}: pass "
            "checkpoint_path=<path to a .pth or .safetensors file>, or "
            "pretrained=False."
        )
    if _hf_offline():
        raise _not_cached_error(model_name)
    try:
        if cfg.hf_hub_id:
            from huggingface_hub import constants, hf_hub_download
            from huggingface_hub.errors import (
                EntryNotFoundError,
                LocalEntryNotFoundError,
            )

            if not _reachable(constants.ENDPOINT):
                raise ConnectionError(f"cannot reach {constants.ENDPOINT}")
            repo_id, revision, names = _hf_candidates(cfg)
            for name in names:
                try:
                    return hf_hub_download(
                        repo_id, name, revision=revision, cache_dir=_hf_cache_dir()
                    )
                except LocalEntryNotFoundError:  # network trouble: stop here
                    raise
                except EntryNotFoundError:  # not in the repo: try the next name
                    if name == names[-1]:
                        raise
        if not _reachable(cfg.url):
            raise ConnectionError(f"cannot reach {cfg.url}")
        path = _torch_hub_file(cfg.url)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(cfg.url, str(path), progress=False)
        return str(path)
    except Exception as err:  # network, hub, HTTP, disk: all mean "not available"
        raise _not_cached_error(model_name) from err


##########################
### checkpoint loading ###
##########################


def _read_state_dict(path: Path) -> Dict[str, torch.Tensor]:
    """Read a checkpoint with timm (safetensors, ``model``/``state_dict`` keys,
    EMA, ``module.`` prefix), also stripping the ``model.`` prefix of a saved
    :class:`Trunk`."""
    try:
        state_dict = timm_load_state_dict(str(path))
    except Exception as err:
        raise RuntimeError(f"Could not read checkpoint '{path}': {err}") from err
    if not isinstance(state_dict, dict) or not state_dict:
        raise RuntimeError(f"Checkpoint '{path}' does not hold a state dict.")
    if all(k.startswith("model.") for k in state_dict):
        state_dict = {k[len("model.") :]: v for k, v in state_dict.items()}
    return dict(state_dict)


def _create_from_checkpoint(
    model_name: str, cfg: Any, checkpoint_path: PathLike, timm_kwargs: Dict[str, Any]
) -> nn.Module:
    """timm.create_model loading weights from a local file, strictly.

    timm's ``pretrained_cfg_overlay=dict(file=...)`` reads every format, but
    with ``num_classes=0`` it loads non-strictly (a checkpoint matching no key
    loads silently).  So the file is read with timm's reader, the classifier
    dropped here, and the state dict handed to timm with ``num_classes=0``:
    timm still applies the model's checkpoint filter (position-embedding
    resampling, key remapping) and now loads strictly.
    """
    path = Path(checkpoint_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(errno.ENOENT, "No such checkpoint file", str(path))
    state_dict = _read_state_dict(path)
    classifiers = cfg.classifier or ()
    for name in (classifiers,) if isinstance(classifiers, str) else classifiers:
        state_dict.pop(f"{name}.weight", None)
        state_dict.pop(f"{name}.bias", None)

    overlay = dict(timm_kwargs.pop("pretrained_cfg_overlay", None) or {})
    overlay.update(state_dict=state_dict, num_classes=0)
    try:
        model = timm.create_model(
            model_name,
            pretrained=True,
            num_classes=0,
            pretrained_cfg_overlay=overlay,
            **timm_kwargs,
        )
    except RuntimeError as err:
        if "loading state_dict" not in str(err):
            raise
        raise RuntimeError(
            f"Checkpoint '{path}' does not fit model {model_name!r}: "
            f"{_summarise_load_error(str(err))}."
        ) from None
    model.pretrained_cfg.pop("state_dict", None)  # timm keeps a copy otherwise
    model.pretrained_cfg["file"] = str(path)
    return model


def _summarise_load_error(message: str, shown: int = 3) -> str:
    """Short summary of torch's load_state_dict error (can be 100s of lines)."""
    missing: List[str] = []
    unexpected: List[str] = []
    mismatched: List[str] = []
    for line in message.splitlines():
        line = line.strip()
        if line.startswith("Missing key(s)"):
            missing = re.findall(r'"([^"]+)"', line)
        elif line.startswith("Unexpected key(s)"):
            unexpected = re.findall(r'"([^"]+)"', line)
        elif line.startswith("size mismatch for"):
            name = line[len("size mismatch for ") :].split(":", 1)[0]
            shapes = re.findall(r"torch\.Size\(\[([^\]]*)\]\)", line)
            if len(shapes) == 2:
                name += f" (checkpoint [{shapes[0]}] vs model [{shapes[1]}])"
            mismatched.append(name)

    parts = []
    for label, keys in (
        ("missing key(s)", missing),
        ("unexpected key(s)", unexpected),
        ("shape mismatch(es)", mismatched),
    ):
        if keys:
            more = f" (+{len(keys) - shown} more)" if len(keys) > shown else ""
            parts.append(f"{len(keys)} {label}: {', '.join(keys[:shown])}{more}")
    if not parts:
        return message.strip().splitlines()[0][:300]
    return "; ".join(parts)
