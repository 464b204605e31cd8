"""Image decoding shared by every dataset: RGB conversion, unreadable files."""

import re

import pytest
from PIL import Image

from pml_soproxy.datasets import CUB200, ImageFolder, ImageLoadError

from .trees import make_class_folders, make_cub, write_image


@pytest.mark.parametrize(
    "mode, ext",
    [("L", ".jpg"), ("CMYK", ".jpg"), ("P", ".png"), ("RGBA", ".png"), ("L", ".bmp")],
)
def test_any_mode_becomes_rgb(tmp_path, mode, ext):
    write_image(tmp_path / "c" / f"x{ext}", mode)
    with Image.open(tmp_path / "c" / f"x{ext}") as raw:
        assert raw.mode == mode
    image, label = ImageFolder(tmp_path, "all")[0]
    assert image.mode == "RGB" and image.size == (6, 5) and label == 0


def test_corrupt_image_named_at_getitem(tmp_path):
    cub = make_cub(tmp_path)
    ds = CUB200(cub, "train")  # construction only checks existence
    (cub / "images" / ds.paths[1].split("images/", 1)[1]).write_bytes(
        b"\xff\xd8 garbage"
    )
    assert ds[0][0].mode == "RGB"
    with pytest.raises(
        ImageLoadError, match="CUB200: cannot read image " + re.escape(ds.paths[1])
    ):
        ds[1]


def test_truncated_image(tmp_path):
    make_class_folders(tmp_path, ["a"])
    path = tmp_path / "a" / "img_0.jpg"
    write_image(path, size=(64, 64))
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ImageLoadError, match=re.escape(str(path))):
        ImageFolder(tmp_path, "all")[0]


def test_image_load_error_is_oserror():
    assert issubclass(ImageLoadError, OSError)


def test_torchvision_transforms_and_dataloader(tmp_path):
    import torch
    from torchvision import transforms as T

    from pml_soproxy.datasets import create_dataset

    tf = T.Compose([T.Resize((16, 16)), T.ToTensor()])
    for ds in (
        CUB200(make_cub(tmp_path), "test", tf),
        create_dataset("digits", None, "train", tf),
    ):
        images, labels = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
        assert images.shape == (4, 3, 16, 16) and labels.dtype == torch.int64
