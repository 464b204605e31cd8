"""Shims for PML 2.x testers and hooks: the PML-0.9 ``reference_set`` and plain
split names, and ``HookContainer.record_group_name`` before any test or without a
record keeper. One function per incompatibility, as described in
:mod:`pml_soproxy.benchmarker.compat`.
"""

from __future__ import annotations

import functools
import types
from typing import List, Sequence

from .patching import accepts, patch

#############################################
### 6. PML 2.x testers: no reference_set, splits_to_eval as (query, [refs])
#############################################


def reference_splits(
    tester, query_split: str, available: Sequence[str] = ()
) -> List[str]:
    """Reference splits of ``query_split`` under the tester's PML-0.9 ``reference_set``.

    ``"compared_to_self"`` (PB's default): the split itself;
    ``"compared_to_sets_combined"``: every split in ``available``;
    ``"compared_to_training_set"``: ``["train"]``;
    a mapping ``{query: [references]}`` (this project's query/gallery
    datasets): the listed splits, other queries compared to themselves.
    """
    mode = getattr(tester, "reference_set", "compared_to_self")
    if isinstance(mode, dict):
        refs = mode.get(query_split, [query_split])
        return [refs] if isinstance(refs, str) else list(refs)
    if mode == "compared_to_sets_combined":
        return list(available) or [query_split]
    if mode == "compared_to_training_set":
        return ["train"]
    if mode == "compared_to_self":
        return [query_split]
    raise ValueError(f"unknown reference_set {mode!r}")


def _reference_only_splits(tester) -> set:
    mode = getattr(tester, "reference_set", None)
    if not isinstance(mode, dict):
        return set()
    refs = {r for v in mode.values() for r in ([v] if isinstance(v, str) else v)}
    return refs - set(mode)


def tester_reference_set() -> bool:
    """PML 0.9 tester API on PML 2 testers: ``reference_set`` and plain split names.

    PB configures ``GlobalEmbeddingSpaceTester(reference_set="compared_to_self")``
    and passes ``splits_to_eval=["val"]``; PML 2 dropped ``reference_set`` and wants
    ``[("val", ["val"])]``. Prevents::

        TypeError: BaseTester.__init__() got an unexpected keyword argument 'reference_set'
        ValueError: too many values to unpack (expected 2)   # "val" unpacked as a tuple

    The tester keeps ``reference_set`` (see :func:`reference_splits`); plain names
    are expanded with it, and PML 2 tuples pass through unchanged.
    """
    from pytorch_metric_learning.testers import BaseTester

    if accepts(BaseTester.__init__, "reference_set"):
        return False
    original_init = BaseTester.__init__
    original_splits = BaseTester.get_splits_to_compute_embeddings

    @functools.wraps(original_init)
    def __init__(self, *args, reference_set="compared_to_self", **kwargs):
        original_init(self, *args, **kwargs)
        self.reference_set = reference_set

    @functools.wraps(original_splits)
    def get_splits_to_compute_embeddings(self, dataset_dict, splits_to_eval):
        available = list(dataset_dict)
        if splits_to_eval is None:
            skip = _reference_only_splits(self)
            splits_to_eval = [s for s in available if s not in skip]
        expanded = [
            (
                (s, reference_splits(self, s, available))
                if isinstance(s, str)
                else (s[0], list(s[1]))
            )
            for s in splits_to_eval
        ]
        return original_splits(self, dataset_dict, expanded)

    patch(BaseTester, "__init__", __init__)
    patch(
        BaseTester, "get_splits_to_compute_embeddings", get_splits_to_compute_embeddings
    )
    return True


#############################################
### 7. PML 2.x: HookContainer.record_group_name before a test / without keeper
#############################################

_NO_HASHES = types.SimpleNamespace(hash_map={})


def hook_record_group_name() -> bool:
    """Make ``HookContainer.record_group_name`` work on all of PB's paths.

    PML 2 derives the name from ``tester.reference_split_names[split]``, filled
    only by ``tester.test()``, and looks it up in ``record_keeper.hash_map``.
    PB asks for names before any test ran (``skip_eval_if_already_done``,
    the aggregator, ``get_dummy_hook_and_tester``) and on hooks built with
    ``record_keeper=None``. Prevents::

        KeyError: 'val'
        AttributeError: 'NoneType' object has no attribute 'hash_map'

    Missing references are taken from the tester's ``reference_set`` (as the
    next ``test()`` will use them).
    """
    from pytorch_metric_learning.utils.logging_presets import HookContainer

    original = HookContainer.record_group_name
    if getattr(original, "_pml_soproxy_shim", False):
        return False

    probe_hooks = HookContainer(record_keeper=None)
    probe_tester = types.SimpleNamespace(
        reference_split_names={},
        description_suffixes=lambda base: base,
    )
    try:
        original(probe_hooks, probe_tester, "val")
        return False  # this PML copes already
    except (KeyError, AttributeError):
        pass

    @functools.wraps(original)
    def record_group_name(self, tester, split_name):
        names = tester.reference_split_names
        if split_name not in names:
            names[split_name] = reference_splits(tester, split_name)
        if self.record_keeper is None:
            self.record_keeper = _NO_HASHES
            try:
                return original(self, tester, split_name)
            finally:
                self.record_keeper = None
        return original(self, tester, split_name)

    record_group_name._pml_soproxy_shim = True
    patch(HookContainer, "record_group_name", record_group_name)
    return True
