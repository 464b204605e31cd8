"""Soft Orthogonal Proxies for pytorch-metric-learning.

The top-level names are imported on first use (PEP 562), so that
``import pml_soproxy.losses`` or ``import pml_soproxy.regularizers`` does not pull
in timm (trunks) or faiss (evaluation, through PML's accuracy calculator).
"""

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# name -> submodule defining it
_LAZY_NAMES = {
    "RECALL_AT_K": "evaluation",
    "RecallAtKCalculator": "evaluation",
    "SoftOrthogonalProxyAnchorLoss": "losses",
    "SoftOrthogonalityRegularizer": "regularizers",
    "create_transforms": "trunks",
    "create_trunk": "trunks",
    "deit_trunk": "trunks",
}
# submodules the eager __init__ used to make attributes of the package
_LAZY_SUBMODULES = ("evaluation", "losses", "regularizers", "trunks")

__all__ = sorted(_LAZY_NAMES)

if TYPE_CHECKING:  # static analysers and IDEs see the eager imports
    from .evaluation import RECALL_AT_K, RecallAtKCalculator
    from .losses import SoftOrthogonalProxyAnchorLoss
    from .regularizers import SoftOrthogonalityRegularizer
    from .trunks import create_transforms, create_trunk, deit_trunk


def __getattr__(name):
    if name in _LAZY_NAMES:
        module = importlib.import_module("." + _LAZY_NAMES[name], __name__)
        value = getattr(module, name)
    elif name in _LAZY_SUBMODULES:
        value = importlib.import_module("." + name, __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__) | set(_LAZY_SUBMODULES))
