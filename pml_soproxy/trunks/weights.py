"""Where a trunk's pretrained weights come from, and strict loading of a file.

* :func:`find_cached_weights`: the file timm would load, if it is already in
  the local Hugging Face hub cache or timm's torch.hub cache.
* :func:`download_weights`: download it into that cache, with a fast
  reachability probe; any failure is one sentence saying what to pass.
* :func:`create_from_checkpoint`: ``timm.create_model`` loading a local file
  strictly.

timm's own machinery is used wherever it does the job: its pretrained cfg
(hub id, file name, URL, classifier names), its hub helpers (revision split,
safetensors-first file order, cached download), its checkpoint reader
(``timm.models.load_state_dict``: safetensors, ``weights_only=True``, EMA and
``module.`` handling) and ``pretrained_cfg_overlay`` (the model's checkpoint
filter: position-embedding resampling, key remapping). Files are never
unpickled.
"""

import errno
import os
import re
import socket
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union
from urllib.parse import urlparse

import timm
import torch
from timm.models import load_state_dict as timm_load_state_dict
from timm.models._hub import (
    HF_WEIGHTS_NAME,
    _get_safe_alternatives,
    download_cached_file,
    hf_split,
)
from torch import nn

PathLike = Union[str, "os.PathLike[str]"]

_TRUE_STRINGS = {"1", "on", "yes", "true"}


def _no_weights_error(what: str) -> RuntimeError:
    return RuntimeError(
        f"{what}: pass checkpoint_path=<path to a .pth or .safetensors file>, or "
        "pretrained=False."
    )


def _not_cached_error(model_name: str) -> RuntimeError:
    return _no_weights_error(
        f"Pretrained weights for {model_name!r} are not in the local cache and "
        "cannot be downloaded here"
    )


#########################
### cached / download ###
#########################


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
    """(repo_id, revision, file names) for an hf-hub cfg, in the order timm's
    ``load_state_dict_from_hf`` tries them (safetensors alternatives first)."""
    repo_id, revision = hf_split(cfg.hf_hub_id)
    filename = cfg.hf_hub_filename or HF_WEIGHTS_NAME
    return repo_id, revision, [*_get_safe_alternatives(filename), filename]


def _torch_hub_file(url: str) -> Path:
    """Where timm's ``download_cached_file`` keeps a weight URL (its
    ``get_cache_dir()``, without creating the folder)."""
    name = os.path.basename(urlparse(url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def _has_url(cfg: Any) -> bool:
    return bool(cfg.url) and not cfg.custom_load  # custom_load: .npz etc.


def find_cached_weights(cfg: Any) -> Optional[str]:
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
    if _has_url(cfg):
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


def _download_from_hf(cfg: Any) -> str:
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

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
    raise AssertionError("unreachable")  # names is never empty


def download_weights(model_name: str, cfg: Any) -> str:
    """Download into timm's usual cache; any failure -> one clear RuntimeError."""
    if not (cfg.hf_hub_id or _has_url(cfg)):
        raise _no_weights_error(f"timm has no pretrained weights for {model_name!r}")
    if _hf_offline():
        raise _not_cached_error(model_name)
    try:
        if cfg.hf_hub_id:
            return _download_from_hf(cfg)
        if not _reachable(cfg.url):
            raise ConnectionError(f"cannot reach {cfg.url}")
        return download_cached_file(cfg.url, check_hash=False, progress=False)
    except Exception as err:  # network, hub, HTTP, disk: all mean "not available"
        raise _not_cached_error(model_name) from err


##########################
### checkpoint loading ###
##########################


def _read_state_dict(path: Path) -> Dict[str, torch.Tensor]:
    """Read a checkpoint with timm (safetensors, ``model``/``state_dict`` keys,
    EMA, ``module.`` prefix), also stripping the ``model.`` prefix of a saved
    :class:`~pml_soproxy.trunks.Trunk`."""
    try:
        state_dict = timm_load_state_dict(str(path), weights_only=True)
    except Exception as err:
        raise RuntimeError(f"Could not read checkpoint '{path}': {err}") from err
    if not isinstance(state_dict, dict) or not state_dict:
        raise RuntimeError(f"Checkpoint '{path}' does not hold a state dict.")
    if all(k.startswith("model.") for k in state_dict):
        state_dict = {k[len("model.") :]: v for k, v in state_dict.items()}
    return dict(state_dict)


def create_from_checkpoint(
    model_name: str, cfg: Any, checkpoint_path: PathLike, timm_kwargs: Dict[str, Any]
) -> nn.Module:
    """timm.create_model loading weights from a local file, strictly.

    timm's ``pretrained_cfg_overlay=dict(file=...)`` reads every format, but
    with ``num_classes=0`` it loads non-strictly (a checkpoint matching no key
    loads silently), and it keeps a saved Trunk's ``model.`` prefix.  So the
    file is read with timm's reader, the classifier dropped here, and the state
    dict handed to timm as ``pretrained_cfg_overlay=dict(state_dict=...)`` with
    ``num_classes=0``: timm still applies the model's checkpoint filter
    (position-embedding resampling, key remapping) and now loads strictly.
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
            f"{summarise_load_error(str(err))}."
        ) from None
    model.pretrained_cfg.pop("state_dict", None)  # timm keeps a copy otherwise
    model.pretrained_cfg["file"] = str(path)
    return model


def _keys_by_kind(message: str) -> Dict[str, List[str]]:
    """The missing / unexpected / shape-mismatched keys of torch's error."""
    found: Dict[str, List[str]] = {
        "missing key(s)": [],
        "unexpected key(s)": [],
        "shape mismatch(es)": [],
    }
    for line in message.splitlines():
        line = line.strip()
        if line.startswith("Missing key(s)"):
            found["missing key(s)"] = re.findall(r'"([^"]+)"', line)
        elif line.startswith("Unexpected key(s)"):
            found["unexpected key(s)"] = re.findall(r'"([^"]+)"', line)
        elif line.startswith("size mismatch for"):
            name = line[len("size mismatch for ") :].split(":", 1)[0]
            shapes = re.findall(r"torch\.Size\(\[([^\]]*)\]\)", line)
            if len(shapes) == 2:
                name += f" (checkpoint [{shapes[0]}] vs model [{shapes[1]}])"
            found["shape mismatch(es)"].append(name)
    return found


def summarise_load_error(message: str, shown: int = 3) -> str:
    """Short summary of torch's load_state_dict error (can be 100s of lines)."""
    parts = []
    for label, keys in _keys_by_kind(message).items():
        if keys:
            more = f" (+{len(keys) - shown} more)" if len(keys) > shown else ""
            parts.append(f"{len(keys)} {label}: {', '.join(keys[:shown])}{more}")
    if not parts:
        return message.strip().splitlines()[0][:300]
    return "; ".join(parts)
