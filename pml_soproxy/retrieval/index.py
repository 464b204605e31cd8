"""A faiss index of normalised embeddings (inner product = cosine similarity) and
its JSON manifest (``INDEX.json``: paths, labels, model, factory string, the index
file's sha256). faiss does the indexing; PML's ``FaissKNN`` does the searching."""

import os
import time
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .embeddings import Embeddings, check_same_model, manifest_path, read_manifest

INDEX_FORMAT = "pml-soproxy-index"
DEFAULT_FACTORY = "Flat"
DEFAULT_TRAIN_SIZE = 200_000

FAISS_MISSING = (
    "faiss is not installed: install pml-soproxy with its CPU build "
    "(pip install 'pml-soproxy[cpu]', i.e. faiss-cpu) or its GPU build "
    "(pip install 'pml-soproxy[gpu]', i.e. faiss-gpu-cu12), not both"
)


def require_faiss():
    """The ``faiss`` module, or one sentence saying which extra to install."""
    try:
        import faiss
    except ImportError:
        raise RuntimeError(FAISS_MISSING) from None
    return faiss


def _first_line(err: BaseException) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()]
    # faiss's C++ errors read "Error in <function> at <file>:<line>: <message>"
    return lines[-1].split(": ", 1)[-1] if lines else type(err).__name__


def _to_gpu(faiss, index):
    if faiss.get_num_gpus() == 0:
        return index
    try:
        return faiss.index_cpu_to_all_gpus(index)
    except (RuntimeError, AttributeError):  # a type without a GPU version (HNSW)
        return index


def _to_cpu(faiss, index):
    return faiss.index_gpu_to_cpu(index) if "Gpu" in type(index).__name__ else index


class Index:
    """An index of :class:`Embeddings`; see :meth:`build`, :meth:`load`."""

    def __init__(self, index, manifest: Dict[str, Any]):
        self.index = index
        self.manifest = manifest
        self._knn = None

    # ----------------------------------------------------------------- facts
    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def paths(self) -> List[str]:
        return self.manifest["paths"]

    @property
    def labels(self) -> List[Optional[str]]:
        return self.manifest["labels"]

    @property
    def model(self) -> Dict[str, Any]:
        return self.manifest["model"]

    def __len__(self) -> int:
        return int(self.index.ntotal)

    # -------------------------------------------------------------- building
    @classmethod
    def build(
        cls,
        embeddings: Embeddings,
        factory: str = DEFAULT_FACTORY,
        train_size: int = DEFAULT_TRAIN_SIZE,
        search_params: str = "",
        seed: int = 0,
        device: str = "cpu",
    ) -> "Index":
        """faiss's ``index_factory(dim, factory, METRIC_INNER_PRODUCT)``, trained
        (when the type needs it) on a seeded sample of ``train_size`` vectors; on
        ``device="cuda"`` trained and filled on the GPUs when faiss has GPU support
        and the index type runs there."""
        faiss = require_faiss()
        if len(embeddings) == 0:
            raise ValueError("no embeddings to index (every image failed to load?)")
        try:
            index = faiss.index_factory(
                embeddings.dim, factory, faiss.METRIC_INNER_PRODUCT
            )
        except RuntimeError as err:
            raise ValueError(
                f"faiss cannot build an index from the factory string {factory!r} "
                f"({_first_line(err)}); examples: 'Flat' (exact), 'IVF1024,Flat', "
                "'HNSW32', 'IVF4096,PQ64'"
            ) from None
        index = _to_gpu(faiss, index) if device.startswith("cuda") else index
        if not index.is_trained:
            rng = np.random.default_rng(seed)
            n = min(len(embeddings), train_size)
            sample = embeddings.vectors[np.sort(rng.choice(len(embeddings), n, False))]
            try:
                index.train(sample)
            except RuntimeError as err:
                raise ValueError(
                    f"faiss could not train the {factory!r} index on {n} vectors "
                    f"({_first_line(err)}); IVF<n> needs well over n training "
                    "vectors (faiss asks for 39n): use a smaller n, or 'Flat'"
                ) from None
        manifest = {
            "format": INDEX_FORMAT, "version": 1, "factory": factory,
            "search_params": search_params, "metric": "inner_product",
            "normalized": True, "dim": embeddings.dim, "count": 0,
            "model": embeddings.model, "paths": [], "labels": [], "failed": [],
        }  # fmt: skip
        built = cls(index, manifest)
        built.set_search_params(search_params)
        built.add(embeddings)
        return built

    def set_search_params(self, params: str):
        """faiss ``ParameterSpace`` settings, e.g. ``"nprobe=16"``, ``"efSearch=128"``."""
        if not params:
            return
        faiss = require_faiss()
        try:
            faiss.ParameterSpace().set_index_parameters(self.index, params)
        except RuntimeError as err:
            raise ValueError(
                f"search parameters {params!r} do not apply to a "
                f"{self.manifest['factory']!r} index ({_first_line(err)})"
            ) from None
        self._knn = None

    def add(self, embeddings: Embeddings) -> int:
        """Add the vectors whose paths are not in the index yet; how many were."""
        check_same_model(self.model, embeddings.model, "the index and the embeddings")
        if embeddings.dim != self.dim:
            raise ValueError(
                f"embeddings of dimension {embeddings.dim} cannot go into an index of "
                f"dimension {self.dim}"
            )
        known = set(self.paths)
        new = [i for i, p in enumerate(embeddings.paths) if p not in known]
        if new:
            self.index.add(embeddings.vectors[new])
        self.manifest["paths"] += [embeddings.paths[i] for i in new]
        self.manifest["labels"] += [embeddings.labels[i] for i in new]
        self.manifest["failed"] += [list(x) for x in embeddings.failed]
        self.manifest["count"] = len(self.manifest["paths"])
        self._knn = None
        return len(new)

    # ------------------------------------------------------------- searching
    def search(self, queries: np.ndarray, k: int, device: str = "cpu"
               ) -> Tuple[np.ndarray, np.ndarray]:  # fmt: skip
        """``(similarities, ids)`` of the ``k`` nearest (at most the index size);
        on ``device="cuda"`` the search runs on the GPU when faiss has GPU support."""
        import torch

        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(
                f"queries of shape {tuple(queries.shape)} do not match the index's "
                f"dimension {self.dim}"
            )
        k = min(k, len(self))
        query = torch.from_numpy(queries)
        if device.startswith("cuda") and torch.cuda.is_available():
            query = query.to(device)
        similarities, ids = self._searcher()(query, k)
        return similarities.cpu().numpy(), ids.cpu().numpy()

    def _searcher(self):
        from pytorch_metric_learning.utils.inference import FaissKNN

        if self._knn is None:
            self._knn = FaissKNN(reset_before=False, reset_after=False)
            self._knn.index = self.index
        return self._knn

    # ------------------------------------------------------------ persisting
    def save(self, path: str) -> str:
        """Write ``path`` (faiss's format) and ``path.json``, each atomically."""
        from ..training.checkpoints import atomic_write, atomic_write_json, sha256_of

        faiss = require_faiss()
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        cpu_index = _to_cpu(faiss, self.index)
        atomic_write(path, lambda tmp: faiss.write_index(cpu_index, tmp))
        self.manifest.update(sha256=sha256_of(path), ntotal=len(self),
                             saved=time.strftime("%Y-%m-%d %H:%M:%S"))  # fmt: skip
        atomic_write_json(manifest_path(path), self.manifest)
        return path

    @classmethod
    def load(cls, path: str) -> "Index":
        """Read an index, checking it against its manifest before faiss parses it."""
        from ..training.checkpoints import sha256_of

        faiss = require_faiss()
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no index file at {path}")
        manifest = read_manifest(path, "index", INDEX_FORMAT)
        if sha256_of(path) != manifest.get("sha256"):
            raise ValueError(
                f"{path} does not match its manifest {os.path.basename(path)}.json "
                "(sha256 differs): the index was changed, truncated or only half "
                "written; build it again with `pml-soproxy index`"
            )
        try:
            index = faiss.read_index(path)
        except RuntimeError as err:
            raise ValueError(
                f"{path} is not a readable faiss index ({_first_line(err)})"
            ) from None
        if index.d != manifest.get("dim") or index.ntotal != manifest["count"]:
            raise ValueError(
                f"{path} holds {index.ntotal} vectors of dimension {index.d}, its "
                f"manifest says {manifest['count']} of dimension {manifest.get('dim')}"
            )
        if not manifest.get("normalized") or manifest.get("metric") != "inner_product":
            raise ValueError(f"{path}: only normalised inner-product indexes are read")
        loaded = cls(index, manifest)
        loaded.set_search_params(manifest.get("search_params", ""))
        return loaded

    def check_model(self, info: Dict[str, Any], what: str = "the query model"):
        """Queries must come from the model that embedded the index."""
        if int(info["embedding_size"]) != self.dim:
            raise ValueError(
                f"{what} ({info.get('weights')}) makes {info['embedding_size']}-d "
                f"embeddings, the index holds {self.dim}-d ones: search with the "
                "model that built the index"
            )
        check_same_model(self.model, info, f"{what} and the index")
