"""Build datasets by name."""

from __future__ import annotations

from typing import Callable, Dict, Optional

from .cars196 import Cars196
from .cub200 import CUB200
from .digits import Digits
from .image_folder import ImageFolder
from .inshop import InShop
from .stanford_online_products import StanfordOnlineProducts

DATASETS: Dict[str, type] = {
    "cub200": CUB200,
    "cars196": Cars196,
    "sop": StanfordOnlineProducts,
    "inshop": InShop,
    "folder": ImageFolder,
    "digits": Digits,
}

ALIASES = {
    "cub": "cub200",
    "cub2002011": "cub200",
    "cars": "cars196",
    "stanfordonlineproducts": "sop",
    "imagefolder": "folder",
}


def create_dataset(
    name: str,
    root=None,
    split: str = "train",
    transform: Optional[Callable] = None,
    **kwargs,
):
    """``DATASETS[name](root, split, transform, **kwargs)``.

    Names: ``cub200``, ``cars196``, ``sop``, ``inshop``, ``folder``, ``digits``
    (case, ``-`` and ``_`` ignored; a few aliases such as ``cub``, ``cars``).
    """
    key = name.lower().replace("-", "").replace("_", "")
    key = ALIASES.get(key, key)
    if key not in DATASETS:
        raise ValueError(
            f"unknown dataset {name!r}; available: {', '.join(sorted(DATASETS))}"
        )
    return DATASETS[key](root, split, transform, **kwargs)
