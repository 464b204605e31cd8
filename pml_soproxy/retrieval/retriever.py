"""One object for using a trained model: embed images, index them, search."""

import os
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

from .embeddings import Embeddings, model_summary
from .images import collect_images, embed_paths
from .index import DEFAULT_FACTORY, Index
from .model import LoadedModel, load_model

Images = Union[str, Sequence[str]]


@dataclass
class Hit:
    rank: int
    path: str
    similarity: float
    label: Optional[str]


@dataclass
class SearchResult:
    query: str
    label: Optional[str]
    hits: List[Hit]

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


class Retriever:
    """A trained model and (once images are added) a faiss index of their embeddings.

    >>> r = Retriever.from_run("runs/cub200")            # run folder or export
    >>> r.add("photos/")                                 # embed + index a folder
    >>> r.search("query.jpg", k=5)[0].hits[0].path        # nearest gallery image
    >>> r.save("photos.faiss"); r = Retriever.load("photos.faiss")
    """

    def __init__(self, model: LoadedModel, index: Optional[Index] = None,
                 batch_size: int = 64, num_workers: int = 0,
                 progress: bool = True):  # fmt: skip
        self.model = model
        self.index = index
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.progress = progress
        if index is not None:
            index.check_model(model.info)

    @classmethod
    def from_run(cls, source: str, device: str = "auto", precision: str = "auto",
                 **kwargs) -> "Retriever":  # fmt: skip
        """A run folder, its weights file, or an export folder of ``pml-soproxy export``."""
        return cls(load_model(source, device, precision), **kwargs)

    @classmethod
    def load(cls, path: str, model: Optional[str] = None, device: str = "auto",
             precision: str = "auto", **kwargs) -> "Retriever":  # fmt: skip
        """An index saved by :meth:`save`, with the model that built it (its path is
        in the index's manifest) or ``model`` (which must have the same weights)."""
        index = Index.load(path)
        source = model or index.model.get("source")
        if not source or not os.path.exists(source):
            raise FileNotFoundError(
                f"the model that built {path} is no longer at {source}: pass the run "
                "folder (or export) it was built with as model= (--model)"
            )
        return cls(load_model(source, device, precision), index, **kwargs)

    # --------------------------------------------------------------- embedding
    def embed(self, images: Images) -> Embeddings:
        """Embeddings of image files and folders (recursively); unreadable images
        are listed in ``.failed``, not fatal."""
        found = collect_images([images] if isinstance(images, str) else images)
        max_pixels = (self.model.info.get("config") or {}).get("max_image_pixels")
        vectors, kept, failed = embed_paths(
            self.model, found.paths, self.batch_size, self.num_workers,
            max_pixels, self.progress,
        )  # fmt: skip
        return Embeddings(vectors, [found.paths[i] for i in kept],
                          [found.labels[i] for i in kept],
                          model_summary(self.model.info), failed)  # fmt: skip

    def _as_embeddings(self, items: Union[Images, Embeddings]) -> Embeddings:
        return items if isinstance(items, Embeddings) else self.embed(items)

    # ---------------------------------------------------------------- indexing
    def add(self, items: Union[Images, Embeddings], factory: str = DEFAULT_FACTORY,
            **build_kwargs) -> int:  # fmt: skip
        """Add images (or embeddings of this model) to the index, building it on
        first use with the faiss ``factory`` string; returns how many were new."""
        embeddings = self._as_embeddings(items)
        if self.index is None:
            device = self.model.device.type
            self.index = Index.build(embeddings, factory, device=device, **build_kwargs)
            return len(self.index)
        return self.index.add(embeddings)

    def search(self, queries: Union[Images, Embeddings], k: int = 10
               ) -> List[SearchResult]:  # fmt: skip
        """The ``k`` most similar indexed images of each query."""
        if self.index is None or len(self.index) == 0:
            raise ValueError("the index is empty: add images before searching")
        embedded = self._as_embeddings(queries)
        similarities, ids = self.index.search(
            embedded.vectors, k, device=self.model.device.type
        )
        return results_of(embedded, similarities, ids, self.index)

    def save(self, path: str) -> str:
        if self.index is None:
            raise ValueError("nothing to save: add images first")
        return self.index.save(path)


def label_known_queries(queries: Embeddings, index: Index):
    """A query file without a class folder takes its label from the index when the
    index holds that very file."""
    known = dict(zip(index.paths, index.labels))
    queries.labels = [known.get(p) if lab is None else lab
                      for p, lab in zip(queries.paths, queries.labels)]  # fmt: skip


def results_of(queries: Embeddings, similarities: np.ndarray, ids: np.ndarray,
               index: Index) -> List[SearchResult]:  # fmt: skip
    label_known_queries(queries, index)
    out = []
    for q, (row_sim, row_ids) in enumerate(zip(similarities, ids)):
        hits = [Hit(rank + 1, index.paths[i], float(s), index.labels[i])
                for rank, (s, i) in enumerate(zip(row_sim, row_ids)) if i >= 0]  # fmt: skip
        out.append(SearchResult(queries.paths[q], queries.labels[q], hits))
    return out
