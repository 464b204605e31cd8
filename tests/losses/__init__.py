"""``TEST_DEVICE`` and ``TEST_DTYPES`` for the loss suite (defined once, in
``tests/regularizers/__init__.py``; in PML's tree they come from its
``tests/__init__.py``)."""

from ..regularizers import TEST_DEVICE, TEST_DTYPES  # noqa: F401
