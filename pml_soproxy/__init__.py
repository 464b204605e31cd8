"""Soft Orthogonal Proxies for pytorch-metric-learning."""

__version__ = "0.1.0"

from .evaluation import RECALL_AT_K, RecallAtKCalculator
from .losses import SoftOrthogonalProxyAnchorLoss
from .regularizers import SoftOrthogonalityRegularizer
from .trunks import create_transforms, create_trunk, deit_trunk
