"""Deep metric learning datasets: official layouts, standard class-disjoint splits."""

from .base import (
    IMAGE_EXTENSIONS,
    DatasetFormatError,
    ImageListDataset,
    ImageLoadError,
)
from .cars196 import Cars196, parse_cars_annos
from .cub200 import CUB200
from .digits import Digits
from .image_folder import ImageFolder
from .inshop import InShop
from .registry import DATASETS, create_dataset
from .splits import ClassSubset, class_disjoint_split, train_val_split
from .stanford_online_products import StanfordOnlineProducts
