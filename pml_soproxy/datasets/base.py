"""The readers' base class and its template method: check the split, find the
dataset's folder, let the reader list the split's images, check that they exist,
number the classes; load RGB images. Also the wrapper base and the pixel-limit
setter. Re-exports the list-file helpers (:mod:`.listing`) and the image decoder
(:mod:`.images`) under their old ``base`` names."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Tuple

from PIL import Image
from torch.utils.data import Dataset

from .images import (  # noqa: F401 (re-exported)
    DEFAULT_MAX_IMAGE_PIXELS,
    ImageLoadError,
    check_max_pixels,
    image_error,
    image_to_rgb,
    load_rgb,
    one_line,
    show_path,
)
from .listing import (  # noqa: F401 (re-exported)
    IMAGE_EXTENSIONS,
    DatasetFormatError,
    check_files_exist,
    check_header,
    check_root,
    check_split,
    contiguous_labels,
    find_dataset_dir,
    find_dirs,
    find_one_dir,
    is_image_file,
    list_images,
    list_subdirs,
    parse_int,
    read_lines,
    read_rows,
    require_file,
)
from .protocol import DatasetProtocol


def in_split(split: str, is_train: bool) -> bool:
    """Whether an item of a train (or test) class belongs to ``split``
    (``"train"``, ``"test"`` or ``"all"``)."""
    return split == "all" or is_train == (split == "train")


@dataclass
class Listing:
    """What a reader's :meth:`ImageListDataset.read_split` found for one split.

    ``paths`` and ``labels`` (raw class keys: ids, item ids, folder names) per
    image, in order; ``root``: the folder the dataset reports (default: the one
    found); ``class_names``: raw key -> name; ``keys``: the label order (default:
    the sorted keys); ``listed_in`` (and each path's line in it, ``lines``): where
    the paths were listed, for the missing-file check (``None``: no check).
    """

    paths: Sequence[str]
    labels: Sequence[Any]
    root: Optional[Path] = None
    class_names: Optional[dict] = None
    keys: Optional[Sequence[Any]] = None
    listed_in: Any = None
    lines: Optional[Sequence[int]] = None


class ImageListDataset(Dataset):
    """A list of image files with 0-based contiguous integer labels, read by a
    template method (as PML's ``BaseDataset``): ``__init__`` checks ``split``
    against ``splits``, finds the dataset's folder (:meth:`locate`: ``root``
    itself, or the folder holding the ``marker`` file at or below ``root``),
    calls the reader's :meth:`read_split` for the split's images, checks that
    they exist and numbers the classes. Readers only parse their own files.

    Items are ``(image, label)``: ``image`` a PIL RGB image passed through
    ``transform`` when given, ``label`` an int. Attributes: ``paths``,
    ``labels`` (numpy int64), ``num_classes``, ``class_names``, ``split``, ``root``;
    the class attribute ``protocol`` is the dataset's
    :class:`~pml_soproxy.datasets.protocol.DatasetProtocol`.

    ``max_image_pixels`` (default Pillow's default limit, 89,478,485; ``None``
    for no limit) refuses larger images in :meth:`load_image` with an
    :class:`ImageLoadError`. Set it on the instance (or with
    :func:`set_max_image_pixels`); it is pickled with the dataset, so DataLoader
    workers apply the same limit whatever their ``Image.MAX_IMAGE_PIXELS``.
    """

    splits: Tuple[str, ...] = ("train", "test", "all")
    protocol: Optional[DatasetProtocol] = None
    #: what ``root`` must hold, for error messages
    expected: str = ""
    #: the file whose folder is the dataset's folder (``None``: ``root`` itself)
    marker: Optional[str] = None
    max_image_pixels: Optional[int] = DEFAULT_MAX_IMAGE_PIXELS

    def __init__(
        self, root, split: str = "train", transform: Optional[Callable] = None
    ):
        check_split(self.name, split, self.splits)
        folder = self.locate(root)
        listing = self.read_split(folder, split)
        if listing.listed_in is not None:
            check_files_exist(
                self.name, listing.paths, listing.listed_in, listing.lines
            )
        self._set_items(listing, split, transform, folder)

    def locate(self, root) -> Optional[Path]:
        """The dataset's folder (resolved), or an error saying what was expected."""
        if self.marker is None:
            return check_root(self.name, root, self.expected)
        return find_dataset_dir(self.name, root, self.marker, self.expected)

    def read_split(self, folder: Optional[Path], split: str) -> Listing:
        """The images of ``split`` (already checked) under ``folder``."""
        raise NotImplementedError

    def _set_items(self, listing: Listing, split: str, transform, folder):
        root = listing.root if listing.root is not None else folder
        if len(listing.paths) == 0:
            raise DatasetFormatError(
                f"{self.name}: split {split!r} has no images under {root}"
            )
        self.paths = [str(p) for p in listing.paths]
        self.labels, keys = contiguous_labels(listing.labels, listing.keys)
        self.class_keys = keys
        names = listing.class_names
        self.class_names = [
            str(names.get(k, k)) if names is not None else str(k) for k in keys
        ]
        self.split = split
        self.transform = transform
        self.root = str(root) if root is not None else None

    @property
    def name(self) -> str:
        return type(self).__name__

    @property
    def num_classes(self) -> int:
        return len(self.class_keys)

    def __len__(self) -> int:
        return len(self.paths)

    def load_image(self, index: int) -> Image.Image:
        """The untransformed RGB image at ``index`` (:func:`load_rgb`, the pixel
        limit checked); :class:`ImageLoadError` if it cannot be read."""
        return load_rgb(self.paths[index], self.name, self.max_image_pixels)

    def __getitem__(self, index: int):
        image = self.load_image(index)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])

    def __repr__(self) -> str:
        return (
            f"{self.name}(split={self.split!r}, images={len(self)}, "
            f"classes={self.num_classes}, root={self.root!r})"
        )


class WrapsDataset(Dataset):
    """A dataset that wraps ``self.dataset`` and forwards every other attribute to it
    (``labels``, ``class_names``, ``paths`` ...). ``dataset`` is looked up in
    ``__dict__`` so that a half-built instance (unpickling, copy) raises
    AttributeError, not recursion."""

    def __getattr__(self, name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        try:
            dataset = self.__dict__["dataset"]
        except KeyError:
            raise AttributeError(name) from None
        return getattr(dataset, name)


def set_max_image_pixels(dataset, limit: Optional[int]):
    """Set ``max_image_pixels`` on ``dataset`` and every dataset it wraps.

    Follows ``.dataset`` links (``ClassSubset``, ``SkipBadImages``...), so the
    limit reaches the :class:`ImageListDataset` that decodes the files whatever
    wraps it. Returns ``dataset``.
    """
    limit = check_max_pixels(limit)
    seen, node = set(), dataset
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        if isinstance(node, ImageListDataset):
            node.max_image_pixels = limit
        node = vars(node).get("dataset") if hasattr(node, "__dict__") else None
    return dataset
