"""The evaluation protocol of a dataset, as one record the dataset class carries.

Like timm's pretrained configs (the facts travel with the thing), each reader
class holds a :class:`DatasetProtocol` as its ``protocol`` attribute: its K set,
whether the test split is searched against itself or queries against a gallery,
the default images per class in a batch and its official split. The Recall@K
calculator (``RECALL_AT_K``, ``for_dataset``, ``dataset=``), the recipe's builder
(train and test splits), its config (the K set, and ``samples_per_class`` as the
layer under ``configs/<name>.yaml``) and the powerful-benchmarker door and eval
configs (``dataset: <name>``) read these facts from the record
(:func:`pml_soproxy.datasets.protocol_of`); ``tests/datasets/test_protocol.py``
fails if a K set is typed anywhere else.

The record is written positionally in each reader: ``DatasetProtocol(name,
recall_at, samples_per_class, official_split)``, query and gallery by keyword.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Optional, Tuple


@dataclass(frozen=True)
class DatasetProtocol:
    """How one dataset is trained on and evaluated.

    Attributes:
        name: the registry name (``create_dataset(name)``, ``--dataset``).
        recall_at: the standard Recall@K cut-offs (sorted positive integers).
        samples_per_class: default images per class in a training batch (M).
        official_split: the standard class-disjoint split, in one sentence.
        train_split: the split the models are trained on.
        query_split: the split whose images are the test queries.
        gallery_split: the split searched for those queries; ``None`` for
            self-retrieval (the query split is its own reference set, each query
            excluded from its own neighbours).
    """

    name: str
    recall_at: Tuple[int, ...]
    samples_per_class: int
    official_split: str
    train_split: str = "train"
    query_split: str = "test"
    gallery_split: Optional[str] = None

    def __post_init__(self):
        ks = tuple(self.recall_at)
        if not ks or any(
            isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1
            for k in ks
        ):
            raise ValueError(f"{self.name}: recall_at must be positive integers: {ks}")
        if list(ks) != sorted(set(ks)):
            raise ValueError(f"{self.name}: recall_at must be sorted, unique: {ks}")
        if self.samples_per_class < 1:
            raise ValueError(f"{self.name}: samples_per_class must be >= 1")
        object.__setattr__(self, "recall_at", ks)

    @property
    def retrieval(self) -> str:
        """``"self"`` (test split against itself) or ``"query_gallery"``."""
        return "self" if self.gallery_split is None else "query_gallery"

    @property
    def reference_splits(self) -> Tuple[str, ...]:
        """The splits the test queries are searched in."""
        return (self.gallery_split or self.query_split,)

    @property
    def test_splits(self) -> Tuple[str, ...]:
        """Every split the test evaluation reads (query first)."""
        return tuple(dict.fromkeys((self.query_split,) + self.reference_splits))
