"""Image files and folders -> a list of paths with optional labels, embedded in
batches with a run's eval transform. An unreadable image is recorded, not fatal."""

import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..datasets.base import DEFAULT_MAX_IMAGE_PIXELS, ImageLoadError, is_image_file


@dataclass
class ImageList:
    """``paths`` with ``labels`` (the class folder's name, or None)."""

    paths: List[str]
    labels: List[Optional[str]]


def collect_images(sources: Sequence[str]) -> ImageList:
    """Image files as given, and every image under each folder (recursively, sorted).

    Under a folder, an image's label is the name of its first-level subfolder
    (``FOLDER/<class>/.../x.jpg``, as torchvision's ImageFolder reads it); images
    directly in the folder, and files given by name, have no label."""
    paths: List[str] = []
    labels: List[Optional[str]] = []
    for source in sources:
        if os.path.isfile(source):
            if not is_image_file(source):
                raise ValueError(
                    f"{source} is not an image file (by its extension); pass image "
                    "files or folders of images"
                )
            paths.append(os.path.abspath(source))
            labels.append(None)
        elif os.path.isdir(source):
            found = _walk(source)
            if not found:
                raise ValueError(
                    f"{source} holds no image files (searched recursively)"
                )
            for path in found:
                relative = os.path.relpath(path, source).split(os.sep)
                paths.append(os.path.abspath(path))
                labels.append(relative[0] if len(relative) > 1 else None)
        else:
            raise FileNotFoundError(f"no image file or folder at {source}")
    return ImageList(paths, labels)


def _walk(folder: str) -> List[str]:
    found = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(root, f) for f in sorted(files)
                  if is_image_file(f) and not f.startswith(".")]  # fmt: skip
    return found


class _ImageFiles(torch.utils.data.Dataset):
    """Items ``(tensor or None, index, reason or None)``: a failure is an item."""

    def __init__(self, paths: Sequence[str], transform, max_pixels: Optional[int]):
        self.paths, self.transform, self.max_pixels = list(paths), transform, max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        from ..datasets.base import load_rgb

        try:
            image = load_rgb(self.paths[index], "image", self.max_pixels)
        except ImageLoadError as err:
            return None, index, err.reason
        return self.transform(image), index, None


def _collate(items):
    good = [(x, i) for x, i, _ in items if x is not None]
    failed = [(i, reason) for x, i, reason in items if x is None]
    images = torch.stack([x for x, _ in good]) if good else None
    return images, [i for _, i in good], failed


def embed_paths(
    model,
    paths: Sequence[str],
    batch_size: int = 64,
    num_workers: int = 0,
    max_pixels: Optional[int] = DEFAULT_MAX_IMAGE_PIXELS,
    progress: bool = True,
) -> Tuple[np.ndarray, List[int], List[Tuple[str, str]]]:
    """L2-normalised float32 embeddings of the readable images.

    Returns ``(vectors, kept, failed)``: ``vectors[j]`` embeds ``paths[kept[j]]``;
    ``failed`` lists ``(path, reason)`` of the images that could not be read."""
    from tqdm import tqdm

    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    loader = torch.utils.data.DataLoader(
        _ImageFiles(paths, model.transform, max_pixels),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=_collate,
        pin_memory=model.device.type == "cuda",
    )
    inference = model.inference_model()
    vectors, kept, failed = [], [], []
    with tqdm(total=len(paths), desc="embedding", unit="img",
              disable=not progress) as bar:  # fmt: skip
        for images, indices, bad in loader:
            if images is not None:
                vectors.append(inference.get_embeddings(images).float().cpu())
                kept += indices
            failed += [(paths[i], reason) for i, reason in bad]
            bar.update(len(indices) + len(bad))
    size = model.embedding_size
    out = torch.cat(vectors).numpy() if vectors else np.zeros((0, size), np.float32)
    return np.ascontiguousarray(out, dtype=np.float32), kept, failed
