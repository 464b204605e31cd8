"""Embeddings on disk: the vectors (safetensors or .npy, never pickled) and a JSON
manifest beside them (``FILE.json``) with the image paths, labels, the model that
made them (weights sha256) and the images that could not be read."""

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

EMBEDDINGS_FORMAT = "pml-soproxy-embeddings"
SUFFIXES = (".safetensors", ".npy")
#: what a manifest keeps of the model description (the full config stays in the run)
MODEL_KEYS = ("source", "weights", "sha256", "model_name", "embedding_size", "epoch",
              "dataset")  # fmt: skip


def manifest_path(path: str) -> str:
    return path + ".json"


def model_summary(info: Dict[str, Any]) -> Dict[str, Any]:
    return {k: info.get(k) for k in MODEL_KEYS}


@dataclass
class Embeddings:
    """``vectors[i]`` (float32, L2-normalised) embeds ``paths[i]``, of class
    ``labels[i]`` (None when unknown)."""

    vectors: np.ndarray
    paths: List[str]
    labels: List[Optional[str]]
    model: Dict[str, Any]
    failed: List[Tuple[str, str]] = field(default_factory=list)

    def __post_init__(self):
        self.vectors = np.ascontiguousarray(self.vectors, dtype=np.float32)
        if self.vectors.ndim != 2 or len(self.vectors) != len(self.paths):
            raise ValueError(
                f"{len(self.paths)} paths but embeddings of shape "
                f"{tuple(self.vectors.shape)}"
            )

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def manifest(self) -> Dict[str, Any]:
        return {
            "format": EMBEDDINGS_FORMAT,
            "version": 1,
            "count": len(self),
            "dim": self.dim,
            "normalized": True,
            "model": self.model,
            "paths": self.paths,
            "labels": self.labels,
            "failed": [list(item) for item in self.failed],
            "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        }

    def save(self, path: str) -> str:
        """Write the vectors to ``path`` (.safetensors or .npy) and ``path.json``."""
        from ..training.checkpoints import atomic_write, atomic_write_json

        if not path.endswith(SUFFIXES):
            raise ValueError(
                f"--out {path}: embeddings are written as .safetensors or .npy"
            )
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        if path.endswith(".npy"):
            atomic_write(path, lambda tmp: _save_npy(tmp, self.vectors))
        else:
            import torch
            from safetensors.torch import save_file

            tensors = {"embeddings": torch.from_numpy(self.vectors)}
            meta = {"format": EMBEDDINGS_FORMAT}
            atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
        atomic_write_json(manifest_path(path), self.manifest())
        return path


def _save_npy(tmp: str, vectors: np.ndarray):
    with open(tmp, "wb") as f:  # a file object: np.save would append ".npy"
        np.save(f, vectors, allow_pickle=False)


def read_manifest(path: str, kind: str, expected_format: str) -> Dict[str, Any]:
    """The JSON manifest beside ``path``, checked for the fields every reader uses."""
    mpath = manifest_path(path)
    if not os.path.isfile(mpath):
        raise FileNotFoundError(
            f"{path} has no manifest {os.path.basename(mpath)} beside it: {kind} "
            "files are read together with the manifest pml-soproxy wrote"
        )
    try:
        with open(mpath, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{mpath} is not a readable JSON manifest ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != expected_format:
        raise ValueError(f"{mpath} is not a pml-soproxy {kind} manifest")
    paths, labels = manifest.get("paths"), manifest.get("labels")
    if not (isinstance(paths, list) and isinstance(labels, list)
            and len(paths) == len(labels) == manifest.get("count")):  # fmt: skip
        raise ValueError(f"{mpath}: its paths, labels and count disagree")
    return manifest


def load_embeddings(path: str) -> Embeddings:
    """Read embeddings written by :meth:`Embeddings.save` (no pickle)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no embeddings file at {path}")
    manifest = read_manifest(path, "embeddings", EMBEDDINGS_FORMAT)
    try:
        if path.endswith(".npy"):
            vectors = np.load(path, allow_pickle=False)
        else:
            from safetensors.numpy import load_file

            vectors = load_file(path)["embeddings"]
    except Exception as err:  # numpy / safetensors raise several types
        raise ValueError(
            f"{path} is not a readable embeddings file ({str(err).splitlines()[0]})"
        ) from None
    if vectors.shape != (manifest["count"], manifest["dim"]):
        raise ValueError(
            f"{path} holds an array of shape {vectors.shape}, its manifest says "
            f"{manifest['count']} x {manifest['dim']}"
        )
    return Embeddings(vectors, manifest["paths"], manifest["labels"],
                      manifest["model"], [tuple(x) for x in manifest["failed"]])  # fmt: skip


def concatenate(parts: Sequence[Embeddings]) -> Embeddings:
    """One set from several, all made by the same model weights."""
    first = parts[0]
    for part in parts[1:]:
        check_same_model(first.model, part.model, "the embedding files")
    return Embeddings(
        np.concatenate([p.vectors for p in parts]),
        [x for p in parts for x in p.paths],
        [x for p in parts for x in p.labels],
        first.model,
        [x for p in parts for x in p.failed],
    )


def check_same_model(expected: Dict[str, Any], got: Dict[str, Any], what: str):
    """Vectors of different weights are not comparable: refuse to mix them."""
    if expected.get("sha256") != got.get("sha256"):
        raise ValueError(
            f"{what} come from different model weights ({expected.get('weights')}, "
            f"sha256 {str(expected.get('sha256'))[:12]}, vs {got.get('weights')}, "
            f"sha256 {str(got.get('sha256'))[:12]}): embeddings of different models "
            "cannot be compared; embed everything with one model"
        )
