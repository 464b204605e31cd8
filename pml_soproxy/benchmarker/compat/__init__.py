"""Shims that let powerful-benchmarker 0.9.33 run, unmodified, next to PML 2.x.

powerful-benchmarker 0.9.33 (frozen since 2020) was written against
pytorch-metric-learning 0.9.92, record-keeper 0.9.29, gdown < 5 and pandas < 3.
This package is the one place for those third-party quirks. Each shim function
bridges exactly one incompatibility *from outside*: it patches an attribute of the
newer library (never a file) so that the old call works again, its docstring quotes
the error it prevents, and it is a no-op (returns ``False``) when the installed
library does not need it. One file per library the shims patch:

pml.py            PML 2.x removals: ``Identity``, ``get_record_keeper(save_figures)``
testers.py        PML 2.x testers and hooks: ``reference_set``, group names
record_keeper.py  record-keeper 0.9.32: keyword, hashed names, rows by iteration
gdown_pandas.py   gdown >= 5 (``assert_md5sum``) and pandas 3 (``delim_whitespace``)
patching.py       the record of patched attributes that :func:`uninstall` restores

The numbers in the files' section headings are the shims' install order.

    from pml_soproxy.benchmarker import compat
    compat.install()        # all shims; idempotent
    compat.uninstall()      # restore every patched attribute (used by the tests)

``SHIMS`` maps each shim's name to its function, in install order.
"""

from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Optional

from .gdown_pandas import gdown_assert_md5sum, pandas_delim_whitespace
from .patching import INSTALLED, undo
from .pml import pml_identity, record_keeper_save_figures
from .record_keeper import (
    ensemble_record_rows,
    record_keeper_group_name_kwarg,
    record_keeper_long_group_names,
)
from .testers import hook_record_group_name, reference_splits, tester_reference_set

__all__ = ["SHIMS", "install", "uninstall", "installed", "reference_splits"]

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
        if INSTALLED.get(name):
            result[name] = False
            continue
        applied = SHIMS[name]()
        INSTALLED[name] = applied
        result[name] = applied
    return result


def uninstall() -> None:
    """Undo every patch made by :func:`install`, newest first."""
    undo()


def installed() -> List[str]:
    """Names of the shims currently applied."""
    return [n for n, applied in INSTALLED.items() if applied]
