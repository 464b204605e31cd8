"""Fixtures of the evaluation tests."""

import pytest

from .helpers import clustered, tie_free


@pytest.fixture(scope="module")
def big_data():
    # ~2,500 points, classes of 2..8 items: max_bin_count is tiny vs K=1000.
    return tie_free(*clustered(500, 2, 8, 16, 0.9, seed=0))
