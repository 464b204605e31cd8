"""Shims for record-keeper 0.9.32 (PB was written for 0.9.29): the
``input_group_name_for_non_objects`` keyword, hashed long group names, and rows
keyed by iteration (the ensemble's epochs are model names). One function per
incompatibility, as described in :mod:`pml_soproxy.benchmarker.compat`.
"""

from __future__ import annotations

import functools
import re

from .patching import accepts, patch

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
    if accepts(original, "input_group_name_for_non_objects"):
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

    patch(RecordKeeper, "update_records", update_records)
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

    patch(rk_utils, "hash_if_too_long", hash_if_too_long)
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
    patch(HookContainer, "end_of_testing_hook", end_of_testing_hook)
    return True


def _db_count(keeper, table: str) -> int:
    """Rows already saved in ``table`` (0 if it does not exist yet)."""
    if not re.fullmatch(r"\w+", table) or not keeper.table_exists(table):
        return 0
    return keeper.query(f"SELECT count(*) FROM {table}")[0]["count(*)"]
