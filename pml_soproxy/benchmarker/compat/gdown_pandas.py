"""Shims for libraries beside PML: gdown (PB's dataset downloads) and pandas (PB's
own dataset classes' list files). One function per incompatibility, as described
in :mod:`pml_soproxy.benchmarker.compat`.
"""

from __future__ import annotations

import functools
import importlib

from .patching import accepts, patch

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

    patch(module, "assert_md5sum", assert_md5sum)
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
    if accepts(original, "delim_whitespace"):
        return False

    @functools.wraps(original)
    def read_csv(*args, delim_whitespace=False, **kwargs):
        if delim_whitespace:
            kwargs["sep"] = r"\s+"
        return original(*args, **kwargs)

    patch(pandas, "read_csv", read_csv)
    return True
