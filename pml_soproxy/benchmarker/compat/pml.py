"""Shims for PML 2.x's removals: ``common_functions.Identity`` and
``get_record_keeper(save_figures=...)``. One function per incompatibility, as
described in :mod:`pml_soproxy.benchmarker.compat`.
"""

from __future__ import annotations

import functools

from .patching import accepts, patch

#############################################
### 2. PML 2.x: common_functions.Identity
#############################################


def pml_identity() -> bool:
    """Restore ``pytorch_metric_learning.utils.common_functions.Identity`` as
    ``torch.nn.Identity`` (PML 2 removed its own copy).

    Prevents, in ``BaseRunner.init_pytorch_getter`` and ``ModelFactory.create_trunk``::

        AttributeError: module 'pytorch_metric_learning.utils.common_functions'
        has no attribute 'Identity'
    """
    import torch
    from pytorch_metric_learning.utils import common_functions

    if hasattr(common_functions, "Identity"):
        return False
    patch(common_functions, "Identity", torch.nn.Identity)
    return True


#############################################
### 3. PML 2.x: get_record_keeper(save_figures=...)
#############################################


def record_keeper_save_figures() -> bool:
    """Let ``logging_presets.get_record_keeper`` accept (and ignore) ``save_figures``.

    Prevents, in ``RecordKeeperFactory`` (PB passes ``save_figures_on_tensorboard``)::

        TypeError: get_record_keeper() got an unexpected keyword argument 'save_figures'
    """
    from pytorch_metric_learning.utils import logging_presets

    original = logging_presets.get_record_keeper
    if accepts(original, "save_figures"):
        return False

    @functools.wraps(original)
    def get_record_keeper(*args, save_figures=None, **kwargs):
        return original(*args, **kwargs)

    patch(logging_presets, "get_record_keeper", get_record_keeper)
    return True
