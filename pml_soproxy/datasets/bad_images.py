"""Keep training when some images cannot be read: substitute and record them."""

from __future__ import annotations

import logging
import os
from typing import Callable, Dict, List, Tuple

import numpy as np

from .base import ImageLoadError, WrapsDataset, one_line, show_path

logger = logging.getLogger(__name__)


class SkipBadImages(WrapsDataset):
    """``dataset`` with unreadable images replaced by another image of their class.

    ``self[i]`` is ``dataset[i]``; when that raises :class:`ImageLoadError`,
    the line ``"<path>\\t<reason>\\n"`` is appended to ``record_path`` (its
    folder is created if needed) and the item of the next index of the same
    label in cyclic index order that loads is returned instead: same label,
    deterministic, identical in every DataLoader worker. Each failed attempt is
    one line, written with a single ``write`` on a file opened for appending, so
    concurrent worker processes do not interleave; :func:`read_skipped` reads
    the file back. If every image of the class fails, :class:`ImageLoadError`
    says so. ``load_image`` (when the dataset has it) substitutes the same way.

    Every other attribute (``labels``, ``num_classes``, ``class_names``,
    ``paths``, ``split``...) is the wrapped dataset's, so samplers, trainers and
    testers see the same dataset. Picklable when ``dataset`` is.
    """

    def __init__(self, dataset, record_path):
        labels = getattr(dataset, "labels", None)
        if labels is None:
            raise TypeError(
                f"SkipBadImages: {type(dataset).__name__} has no labels; substitutes "
                "are drawn from the same class"
            )
        self.dataset = dataset
        self.record_path = os.fspath(record_path)
        labels = np.asarray(labels).reshape(-1)
        order = np.argsort(labels, kind="stable")
        classes, starts = np.unique(labels[order], return_index=True)
        self._members: Dict[int, np.ndarray] = {
            int(c): members
            for c, members in zip(classes.tolist(), np.split(order, starts[1:]))
        }
        self._labels = labels

    def __getstate__(self):
        return dict(self.__dict__)

    def __setstate__(self, state):
        self.__dict__.update(state)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return self._fetch(self.dataset.__getitem__, index)

    @property
    def load_image(self) -> Callable:
        """``dataset.load_image`` with the same substitution as ``self[i]``."""
        inner = self.dataset.load_image  # AttributeError when the dataset has none

        def load_image(index: int):
            return self._fetch(inner, index)

        return load_image

    def _fetch(self, get: Callable, index: int):
        index = int(index)
        try:
            return get(index)
        except ImageLoadError as e:
            first = self._record(index, e)
        label = int(self._labels[index])
        members = self._members[label]
        pos = int(np.searchsorted(members, index))
        for j in np.concatenate([members[pos + 1 :], members[:pos]]).tolist():
            try:
                item = get(j)
            except ImageLoadError as e:
                self._record(j, e)
                continue
            logger.warning(
                "skipped unreadable image %s (index %d); using index %d of the same "
                "class instead (listed in %s)",
                first,
                index,
                j,
                self.record_path,
            )
            return item
        raise ImageLoadError(
            f"{self._name()}: every image of class {self._class_name(label)} "
            f"({len(members)} image(s)) failed to load, e.g. {first}; see "
            f"{show_path(self.record_path)}"
        )

    def _record(self, index: int, error: ImageLoadError) -> str:
        path = getattr(error, "path", None)
        if path is None:
            paths = getattr(self.dataset, "paths", None)
            path = show_path(paths[index]) if paths is not None else f"index {index}"
        reason = getattr(error, "reason", None) or str(error)
        line = f"{path}\t{one_line(reason)}\n".encode("utf-8")
        folder = os.path.dirname(self.record_path)
        if folder:
            os.makedirs(folder, exist_ok=True)
        with open(self.record_path, "ab", buffering=0) as f:
            f.write(line)
        return path

    def _name(self) -> str:
        name = getattr(self.dataset, "name", None)
        return name if isinstance(name, str) else type(self.dataset).__name__

    def _class_name(self, label: int) -> str:
        names = getattr(self.dataset, "class_names", None)
        if names is not None and 0 <= label < len(names):
            return f"{names[label]!r} (label {label})"
        return f"label {label}"

    def __repr__(self) -> str:
        return f"SkipBadImages({self.dataset!r}, record_path={self.record_path!r})"


def read_skipped(record_path) -> List[Tuple[str, str]]:
    """``(path, reason)`` for each image listed in ``record_path``, once each.

    In first-seen order, keeping the first reason of each path; ``[]`` when the
    file does not exist (nothing was skipped).
    """
    try:
        with open(record_path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return []
    seen: Dict[str, str] = {}
    for line in lines:
        if not line.strip():
            continue
        path, _, reason = line.partition("\t")
        seen.setdefault(path, reason)
    return list(seen.items())
