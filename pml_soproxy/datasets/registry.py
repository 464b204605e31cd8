"""Build datasets by name, and find a dataset's protocol record by name."""

from __future__ import annotations

from typing import Callable, Dict, Optional

from .cars196 import Cars196
from .cub200 import CUB200
from .digits import Digits
from .image_folder import ImageFolder
from .inshop import InShop
from .protocol import DatasetProtocol
from .stanford_online_products import StanfordOnlineProducts

#: registry name (each class's ``protocol.name``) -> reader class
DATASETS: Dict[str, type] = {
    cls.protocol.name: cls
    for cls in (CUB200, Cars196, StanfordOnlineProducts, InShop, ImageFolder, Digits)
}

#: registry name -> protocol record, read from the classes
PROTOCOLS: Dict[str, DatasetProtocol] = {
    name: cls.protocol for name, cls in DATASETS.items()
}

ALIASES = {
    "cub": "cub200",
    "cub2002011": "cub200",
    "cars": "cars196",
    "stanfordonlineproducts": "sop",
    "imagefolder": "folder",
}


def dataset_class(name: str) -> type:
    """The reader class of ``name`` (case, ``-`` and ``_`` ignored; aliases such
    as ``cub``, ``cars``); ``ValueError`` naming the registered ones otherwise."""
    key = str(name).lower().replace("-", "").replace("_", "")
    key = ALIASES.get(key, key)
    if key not in DATASETS:
        raise ValueError(
            f"unknown dataset {name!r}; available: {', '.join(sorted(DATASETS))}"
        )
    return DATASETS[key]


def protocol_of(name: str) -> DatasetProtocol:
    """The :class:`DatasetProtocol` record of the dataset ``name`` (see
    :func:`dataset_class` for the names accepted)."""
    return dataset_class(name).protocol


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
    return dataset_class(name)(root, split, transform, **kwargs)
