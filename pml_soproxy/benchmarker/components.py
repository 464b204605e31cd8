"""What the launcher registers with powerful-benchmarker (PB).

* ``DeiTTrunk`` (model): :func:`pml_soproxy.trunks.deit_trunk` in the shape PB's
  ``ModelFactory`` expects: a ``.fc`` whose ``in_features`` is the feature size
  (PB reads it, then replaces ``.fc`` by an identity), and the ``mean``/``std``/
  ``input_space``/``input_range`` attributes its ``TransformFactory`` reads.
* ``CUB200``, ``Cars196``, ``StanfordOnlineProducts``, ``InShop`` (dataset): this
  project's readers of the official releases under PB's dataset protocol
  (``(root, transform, download)``, items ``{"data": image, "label": int}``,
  ``.labels``), the whole release ("all" split) so PB's split managers form the
  folds. They replace PB's classes of the same names, which assert the full
  dataset sizes (so no small or partial copy loads) and cannot read In-Shop.
* ``InShopSplitManager`` (split_manager): class-disjoint folds over the official
  In-Shop training items for train/val, the official query items as ``test``
  and the gallery items as ``gallery`` (the test queries' reference set).
* our loss, regulariser and ``RecallAtKCalculator`` (the eval configs pass it
  ``dataset: <name>``, so its K set comes from the dataset's protocol record).

Dataset facts (K sets, query/gallery splits) are read from the readers'
``protocol`` records and public attributes (``InShop.evaluation_status``), never
from their files or internals.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
from torch import nn

from .. import datasets as _datasets
from ..evaluation import RecallAtKCalculator
from ..losses import SoftOrthogonalProxyAnchorLoss
from ..regularizers import SoftOrthogonalityRegularizer
from ..trunks import DEFAULT_DEIT, Trunk, deit_trunk

__all__ = [
    "DeiTTrunk",
    "CUB200",
    "Cars196",
    "StanfordOnlineProducts",
    "InShop",
    "InShopSplitManager",
    "register_all",
]


##############
### trunk ###
##############


class FeatureHead(nn.Identity):
    """Identity standing where PB looks for the classifier (``in_features``)."""

    def __init__(self, in_features: int):
        super().__init__()
        self.in_features = int(in_features)


class DeiTTrunk(Trunk):
    """A :class:`~pml_soproxy.trunks.Trunk` built by ``deit_trunk`` for PB.

    YAML: ``models: {trunk: {DeiTTrunk: {model_name: ..., pretrained: true,
    checkpoint_path: /path/deit.pth}}}``; other keys go to ``timm.create_model``
    (``img_size``, ``depth``, ``embed_dim``, ``drop_path_rate``, ...).
    """

    def __init__(
        self,
        model_name: str = DEFAULT_DEIT,
        pretrained: bool = True,
        checkpoint_path: Optional[str] = None,
        **timm_kwargs,
    ):
        built = deit_trunk(
            model_name,
            pretrained=pretrained,
            checkpoint_path=checkpoint_path or None,
            **timm_kwargs,
        )
        super().__init__(built.model, built.data_config)
        self.fc = FeatureHead(self.output_size)
        self.mean = list(self.data_config["mean"])
        self.std = list(self.data_config["std"])
        self.input_space = "RGB"
        self.input_range = [0, 1]

    def forward(self, x):
        return self.fc(self.model(x))


################
### datasets ###
################


def _no_download(name: str, download: bool):
    if download:
        raise ValueError(
            f"{name}: download is not supported; put the official release under "
            "--dataset_root (see the README's powerful-benchmarker section)"
        )


class _PBItems:
    """PB's dataset protocol over one of our readers: ``(root, transform,
    download)`` (the whole release, split ``"all"``, unless ``split`` is given);
    items ``{"data": transformed image, "label": int}``."""

    def __init__(
        self, root, transform: Optional[Callable] = None, download=False, split="all"
    ):
        _no_download(type(self).__name__, download)
        super().__init__(root, split, transform)

    def __getitem__(self, index):
        image, label = super().__getitem__(index)
        return {"data": image, "label": label}


class CUB200(_PBItems, _datasets.CUB200):
    """CUB-200-2011 (all 200 classes) for PB; root: the folder or a parent."""


class Cars196(_PBItems, _datasets.Cars196):
    """Cars196 (all 196 classes) for PB; official ``cars_annos.mat`` or mirror."""


class StanfordOnlineProducts(_PBItems, _datasets.StanfordOnlineProducts):
    """Stanford Online Products (all 22,634 classes) for PB."""


class InShop(_PBItems, _datasets.InShop):
    """In-Shop Clothes Retrieval, every item, with the reader's
    ``evaluation_status`` per image (``"train"``, ``"query"``, ``"gallery"``) for
    :class:`InShopSplitManager`."""


#####################
### split manager ###
#####################


def _split_manager_base():
    from powerful_benchmarker.split_managers import ClassDisjointSplitManager

    return ClassDisjointSplitManager


class InShopSplitManager(_split_manager_base()):
    """In-Shop: class-disjoint k-fold train/val over the official training items;
    ``test`` = the official queries, ``gallery`` = the official gallery.

    Any evaluation that includes ``test`` also gets ``gallery`` in its dataset
    dict; the tester's ``reference_set: {test: [gallery]}`` (our In-Shop eval
    config) makes the gallery the queries' reference set.
    """

    def __init__(
        self,
        num_training_partitions=4,
        num_training_sets=4,
        shuffle=False,
        random_seed=None,
        **kwargs,
    ):
        kwargs.pop("test_size", None)
        kwargs.pop("test_start_idx", None)
        super().__init__(
            num_training_partitions=num_training_partitions,
            num_training_sets=num_training_sets,
            shuffle=shuffle,
            random_seed=random_seed,
            **kwargs,
        )
        self.split_names = ["train", "val", "test", "gallery"]

    def _create_split_schemes(self, datasets):
        from collections import OrderedDict

        from powerful_benchmarker.utils import common_functions as pb_cf
        from powerful_benchmarker.utils import dataset_utils as d_u
        from sklearn.model_selection import KFold

        sample = pb_cf.first_val_of_dict(pb_cf.first_val_of_dict(datasets))
        status = d_u.get_dataset_attr(sample, "evaluation_status")
        labels = self.get_labels(dataset=sample)
        protocol = _datasets.InShop.protocol  # PB's "test" = the official queries
        is_train = status == protocol.train_split
        train_classes = np.array(sorted(set(labels[is_train].tolist())))
        fixed = {
            "test": np.flatnonzero(status == protocol.query_split),
            "gallery": np.flatnonzero(status == protocol.gallery_split),
        }
        kfold = KFold(
            n_splits=self.num_training_partitions,
            shuffle=self.shuffle,
            random_state=self.random_seed if self.shuffle else None,
        )
        schemes = OrderedDict()
        for i, (train_fold, val_fold) in enumerate(kfold.split(train_classes)):
            if i >= self.num_training_sets:
                break
            indices = dict(fixed)
            for name, fold in (("train", train_fold), ("val", val_fold)):
                indices[name] = np.flatnonzero(
                    is_train & np.isin(labels, train_classes[fold])
                )
            scheme = schemes[self.get_split_scheme_name(i)] = OrderedDict()
            for transform_type, by_split in datasets.items():
                scheme[transform_type] = OrderedDict(
                    (name, d_u.create_subset(by_split[name], indices[name].tolist()))
                    for name in self.split_names
                )
        return schemes

    def split_assertions(self):
        from powerful_benchmarker.split_managers import BaseSplitManager

        BaseSplitManager.split_assertions(self)  # index-disjoint, test fixed
        for t_type in self.split_scheme_holder.get_transform_types():
            self.assert_across(
                "split_scheme_names",
                "equal",
                transform_types=[t_type],
                split_names=["gallery"],
            )
            self.assert_across(
                "split_scheme_names",
                "disjoint",
                transform_types=[t_type],
                split_names=["val"],
            )
            # query and gallery share their items; everything else is class-disjoint
            self.assert_across(
                "split_scheme_names",
                "disjoint",
                within_group=True,
                attribute_descriptor="class labels",
                attribute_getter=self.get_list_for_class_disjoint_assertion,
                transform_types=[t_type],
                split_names=["train", "val", "test"],
            )

    def get_dataset_dict(
        self, transform_type, inclusion_list=None, exclusion_list=None
    ):
        if inclusion_list is not None and "test" in inclusion_list:
            inclusion_list = list(inclusion_list)
            if "gallery" not in inclusion_list:
                inclusion_list.append("gallery")
        return super().get_dataset_dict(transform_type, inclusion_list, exclusion_list)

    def get_test_set_name(self):
        return "InShopQueryGallery"

    def get_base_split_scheme_name(self):
        shuffled = "Shuffled" if self.shuffle else ""
        return f"{self.get_test_set_name()}_{shuffled}Partitions{self.num_training_partitions}"


################
### register ###
################


def register_all(runner) -> None:
    """Register this project's classes with a PB runner (prepended: they win
    over PB's classes of the same name)."""
    for kind, obj in (
        ("model", DeiTTrunk),
        ("loss", SoftOrthogonalProxyAnchorLoss),
        ("regularizer", SoftOrthogonalityRegularizer),
        ("accuracy_calculator", RecallAtKCalculator),
        ("dataset", CUB200),
        ("dataset", Cars196),
        ("dataset", StanfordOnlineProducts),
        ("dataset", InShop),
        ("split_manager", InShopSplitManager),
    ):
        runner.register(kind, obj)
