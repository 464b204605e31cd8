"""Soft Orthogonal Proxies for pytorch-metric-learning."""

__version__ = "0.1.0"

from .losses import SoftOrthogonalProxyAnchorLoss
from .regularizers import SoftOrthogonalityRegularizer
