"""One tiny trained run and a small folder of digit images, shared by the tests."""

import os

import numpy as np
import pytest

from ..training.helpers import config

PER_CLASS = 12


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
    from pml_soproxy.training import train

    folder = tmp_path_factory.mktemp("retrieval")
    train(config(folder, "run", embedding_size=16, figures=True))
    return str(folder / "run")


@pytest.fixture(scope="session")
def image_dir(tmp_path_factory):
    """``<digit>/<index>.png``, PER_CLASS images per digit 5-9 of the test split,
    one nested subfolder, and one unreadable file."""
    from pml_soproxy.datasets.digits import Digits

    folder = tmp_path_factory.mktemp("images")
    digits = Digits(split="test")
    for label in range(digits.num_classes):
        name = digits.class_names[label]
        for n, i in enumerate(np.flatnonzero(digits.labels == label)[:PER_CLASS]):
            sub = os.path.join(folder, name, "more" if n == 0 else "")
            os.makedirs(sub, exist_ok=True)
            digits.load_image(int(i)).save(os.path.join(sub, f"{i:04d}.png"))
    with open(os.path.join(folder, "5", "broken.png"), "w") as f:
        f.write("not an image")
    return str(folder)


@pytest.fixture(scope="session")
def retriever(run_dir):
    from pml_soproxy.retrieval import Retriever

    return Retriever.from_run(run_dir, device="cpu", progress=False)
