"""Image trunks (DeiT by default) built on timm, for metric learning.

A trunk maps images ``(N, 3, H, W)`` to the pooled backbone feature
``(N, trunk.output_size)``; the embedder / loss sit on top of it.

>>> trunk = deit_trunk(checkpoint_path="deit_small_distilled_patch16_224.pth")
>>> train_tf, eval_tf = create_transforms(trunk)

* :mod:`.factory`: the :class:`Trunk` module, ``create_trunk`` / ``deit_trunk``
  and the image transforms (from timm's data config).
* :mod:`.weights`: where pretrained weights come from (a local file, the local
  Hugging Face / torch.hub cache timm downloads into, or a download) and strict
  loading of a local file. Local files are read with ``weights_only=True`` or as
  safetensors, never unpickled.

Device placement is left to the caller.
"""

from .factory import (
    DEFAULT_DEIT,
    Trunk,
    create_transforms,
    create_trunk,
    deit_trunk,
    get_transforms,
    pretrained_cfg,
)
from .weights import (
    download_weights,
    find_cached_weights,
    summarise_load_error,
)

__all__ = [
    "DEFAULT_DEIT",
    "Trunk",
    "create_trunk",
    "deit_trunk",
    "get_transforms",
    "create_transforms",
    "pretrained_cfg",
    "find_cached_weights",
    "download_weights",
    "summarise_load_error",
]
