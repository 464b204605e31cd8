"""Shims that let powerful-benchmarker 0.9.33 run, unmodified, next to PML 2.x.

powerful-benchmarker 0.9.33 (frozen since 2020) was written against
pytorch-metric-learning 0.9.92, record-keeper 0.9.29, gdown < 5 and pandas < 3.
Each function below bridges exactly one incompatibility *from outside*: it
patches an attribute of the newer library (never a file) so that the old call
works again, its docstring quotes the error it prevents, and it is a no-op
(returns ``False``) when the installed library does not need it.

    from pml_soproxy.benchmarker import compat
    compat.install()        # all shims; idempotent
    compat.uninstall()      # restore every patched attribute (used by the tests)

``SHIMS`` maps each shim's name to its function, in install order.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import re
import types
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

__all__ = ["SHIMS", "install", "uninstall", "installed", "reference_splits"]

# (owner, attribute name, original value or _MISSING), most recent last.
_PATCHES: List[Tuple[object, str, object]] = []
_INSTALLED: Dict[str, bool] = {}
_MISSING = object()


def _patch(owner, name: str, value) -> None:
    """Set ``owner.name = value``, remembering the original for ``uninstall``."""
    _PATCHES.append((owner, name, owner.__dict__.get(name, _MISSING)))
    setattr(owner, name, value)


def _accepts(func: Callable, parameter: str) -> bool:
    try:  # follow_wrapped=False: a shim's wrapper counts as accepting it
        return parameter in inspect.signature(func, follow_wrapped=False).parameters
    except (TypeError, ValueError):
        return False


#############################################
### 1. gdown >= 5: cached_download.assert_md5sum
#############################################


def gdown_assert_md5sum() -> bool:
    """Give ``gdown.cached_download`` back its ``assert_md5sum`` (removed in gdown 5).

    Prevents, on ``import powerful_benchmarker`` runners/datasets::

        ImportError: cannot import name 'assert_md5sum' from 'gdown.cached_download'
    """
    try:
        module = importlib.import_module("gdown.cached_download")
    except ImportError:  # gdown is not installed: PB's CUB200 import fails anyway
        return False
    if hasattr(module, "assert_md5sum"):
        return False

    def assert_md5sum(filename, md5, quiet=False, blocksize=65536):
        """gdown < 5's check: raise AssertionError if the file's md5 differs."""
        import hashlib

        digest = hashlib.md5()
        with open(filename, "rb") as f:
            for block in iter(lambda: f.read(blocksize), b""):
                digest.update(block)
        actual = digest.hexdigest()
        if actual != md5:
            raise AssertionError(
                f"MD5 of {filename} is {actual}, which differs from {md5}."
            )

    _patch(module, "assert_md5sum", assert_md5sum)
    return True


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
    _patch(common_functions, "Identity", torch.nn.Identity)
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
    if _accepts(original, "save_figures"):
        return False

    @functools.wraps(original)
    def get_record_keeper(*args, save_figures=None, **kwargs):
        return original(*args, **kwargs)

    _patch(logging_presets, "get_record_keeper", get_record_keeper)
    return True


#############################################
### 4. record-keeper 0.9.32: update_records(input_group_name_for_non_objects=...)
#############################################


def record_keeper_group_name_kwarg() -> bool:
    """Accept record-keeper 0.9.29's ``input_group_name_for_non_objects``.

    With it, every ``{series: value}`` pair goes straight into that group (table),
    whatever the value's type (PB records ``datetime`` timestamps this way).
    Prevents, in PB's aggregator and ensemble evaluation::

        TypeError: RecordKeeper.update_records() got an unexpected keyword argument
        'input_group_name_for_non_objects'
    """
    from record_keeper import RecordKeeper

    original = RecordKeeper.update_records
    if _accepts(original, "input_group_name_for_non_objects"):
        return False

    @functools.wraps(original)
    def update_records(
        self,
        record_these,
        global_iteration,
        *args,
        input_group_name_for_non_objects=None,
        **kwargs,
    ):
        if input_group_name_for_non_objects is None:
            return original(self, record_these, global_iteration, *args, **kwargs)
        for series, value in record_these.items():
            if value is not None:
                self.append_primitive(
                    input_group_name_for_non_objects, series, value, global_iteration
                )

    _patch(RecordKeeper, "update_records", update_records)
    return True


#############################################
### 5. record-keeper 0.9.32: hashed long group names
#############################################

#: A group name is a table name and a file name (``<group>.csv``); file systems
#: allow 255 bytes.
_MAX_GROUP_NAME_BYTES = 255 - len(".csv")


def record_keeper_long_group_names() -> bool:
    """Keep group (table) names that fit in a file name unhashed.

    record-keeper 0.9.32 replaces any group name with more than 64 characters
    between its first and last ``_`` by a sha256 hash, and remembers the mapping
    only in memory. PB's default names stay just under that, but a tester with
    ``use_trunk_output``, ``pca`` or an ``avg_of_avgs`` calculator crosses it
    (``MeanAggregator_accuracies_normalized_trunk_GlobalEmbeddingSpaceTester_
    level_0_VAL_vs_self``); PB then queries the plain name, so its aggregator and
    ensemble code (and any resumed process, whose map is empty) look in a table
    that does not exist::

        sqlite3.OperationalError: no such table: MeanAggregator_accuracies_...
        (surfacing as a bare KeyError from HookContainer.try_keys)

    Names longer than a file name allows are still hashed.
    """
    from record_keeper import utils as rk_utils

    original = rk_utils.hash_if_too_long
    probe = "a_" + "b" * 80 + "_c"
    if original(probe) == probe:
        return False

    @functools.wraps(original)
    def hash_if_too_long(x):
        if len(x.encode("utf-8")) <= _MAX_GROUP_NAME_BYTES:
            return x
        return original(x)

    _patch(rk_utils, "hash_if_too_long", hash_if_too_long)
    return True


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

    if _accepts(BaseTester.__init__, "reference_set"):
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

    _patch(BaseTester, "__init__", __init__)
    _patch(
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
    _patch(HookContainer, "record_group_name", record_group_name)
    return True


#############################################
### 8. pandas 3: read_csv(delim_whitespace=True)
#############################################


def pandas_delim_whitespace() -> bool:
    """Translate ``read_csv(delim_whitespace=True)`` to ``sep=r"\\s+"`` (pandas 3).

    PB's own StanfordOnlineProducts and CelebA classes read their list files so.
    Prevents::

        TypeError: read_csv() got an unexpected keyword argument 'delim_whitespace'
    """
    try:
        import pandas
    except ImportError:
        return False
    original = pandas.read_csv
    if _accepts(original, "delim_whitespace"):
        return False

    @functools.wraps(original)
    def read_csv(*args, delim_whitespace=False, **kwargs):
        if delim_whitespace:
            kwargs["sep"] = r"\s+"
        return original(*args, **kwargs)

    _patch(pandas, "read_csv", read_csv)
    return True


#############################################
### 9. record-keeper 0.9.32 rows keyed by iteration: ensemble epochs are names
#############################################


def ensemble_record_rows() -> bool:
    """Key ensemble accuracy rows by row number, not by model name.

    PB's ``eval_ensemble`` passes the model name (``"trained"``) as the epoch, so
    the tester's accuracies are recorded at iteration ``"trained"`` while PB
    records ``trained_status``/``timestamp`` for the same row at the integer
    iteration ``count + 1``. record-keeper 0.9.32 keys rows by iteration and sorts
    them when saving. Prevents::

        TypeError: '<' not supported between instances of 'int' and 'str'

    The accuracies are recorded at ``count + 1`` too (one row, as with 0.9.29);
    the ``epoch`` column still holds the model name.
    """
    from pytorch_metric_learning.utils.logging_presets import HookContainer
    from record_keeper import utils as rk_utils

    if not hasattr(rk_utils, "separate_iterations_from_series"):
        return False  # record-keeper 0.9.29: rows are appended, not keyed
    original = HookContainer.end_of_testing_hook
    if getattr(original, "_pml_soproxy_shim", False):
        return False

    @functools.wraps(original)
    def end_of_testing_hook(self, tester):
        epochs = [a.get("epoch") for a in tester.all_accuracies.values()]
        if all(isinstance(e, int) for e in epochs):
            return original(self, tester)
        keeper = self.record_keeper
        update = keeper.update_records

        def update_records(record_these, global_iteration, *args, **kwargs):
            if isinstance(global_iteration, str):
                table = kwargs.get("parent_name", "")
                global_iteration = _db_count(keeper, table) + 1
            return update(record_these, global_iteration, *args, **kwargs)

        keeper.update_records = update_records
        try:
            return original(self, tester)
        finally:
            del keeper.update_records

    end_of_testing_hook._pml_soproxy_shim = True
    _patch(HookContainer, "end_of_testing_hook", end_of_testing_hook)
    return True


def _db_count(keeper, table: str) -> int:
    """Rows already saved in ``table`` (0 if it does not exist yet)."""
    if not re.fullmatch(r"\w+", table) or not keeper.table_exists(table):
        return 0
    return keeper.query(f"SELECT count(*) FROM {table}")[0]["count(*)"]


#############################################
### install / uninstall
#############################################

SHIMS: Dict[str, Callable[[], bool]] = {
    "gdown_assert_md5sum": gdown_assert_md5sum,
    "pml_identity": pml_identity,
    "record_keeper_save_figures": record_keeper_save_figures,
    "record_keeper_group_name_kwarg": record_keeper_group_name_kwarg,
    "record_keeper_long_group_names": record_keeper_long_group_names,
    "tester_reference_set": tester_reference_set,
    "hook_record_group_name": hook_record_group_name,
    "pandas_delim_whitespace": pandas_delim_whitespace,
    "ensemble_record_rows": ensemble_record_rows,
}


def install(only: Optional[Iterable[str]] = None) -> Dict[str, bool]:
    """Install the shims (all, or those named in ``only``); idempotent.

    Returns ``{name: applied}``; ``False`` means not needed here (or already in).
    """
    names = list(SHIMS) if only is None else list(only)
    unknown = [n for n in names if n not in SHIMS]
    if unknown:
        raise ValueError(f"unknown shim(s) {unknown}; known: {list(SHIMS)}")
    result = {}
    for name in names:
        if _INSTALLED.get(name):
            result[name] = False
            continue
        applied = SHIMS[name]()
        _INSTALLED[name] = applied
        result[name] = applied
    return result


def uninstall() -> None:
    """Undo every patch made by :func:`install`, newest first."""
    while _PATCHES:
        owner, name, original = _PATCHES.pop()
        if original is _MISSING:
            try:
                delattr(owner, name)
            except AttributeError:
                pass
        else:
            setattr(owner, name, original)
    _INSTALLED.clear()


def installed() -> List[str]:
    """Names of the shims currently applied."""
    return [n for n, applied in _INSTALLED.items() if applied]
