"""Deep metric learning datasets: official layouts, standard class-disjoint splits,
and each dataset's evaluation protocol (``protocol_of(name)``)."""

from .bad_images import SkipBadImages, read_skipped
from .base import (
    DEFAULT_MAX_IMAGE_PIXELS,
    IMAGE_EXTENSIONS,
    DatasetFormatError,
    ImageListDataset,
    ImageLoadError,
    Listing,
    image_to_rgb,
    load_rgb,
    set_max_image_pixels,
)
from .cars196 import Cars196, parse_cars_annos
from .cub200 import CUB200
from .digits import Digits
from .image_folder import ImageFolder
from .inshop import InShop
from .protocol import DatasetProtocol
from .registry import DATASETS, PROTOCOLS, create_dataset, dataset_class, protocol_of
from .splits import ClassSubset, class_disjoint_split, train_val_split
from .stanford_online_products import StanfordOnlineProducts
