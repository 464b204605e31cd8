"""The settings PML's ``tests/__init__.py`` gives its tests, for the suites in
``tests/regularizers`` and ``tests/losses``, which are also PML's: the exporter
(``pml_soproxy.upstream.suite``) copies them into PML's tree, where
``from . import TEST_DEVICE, TEST_DTYPES`` becomes ``from .. import ...``.

Read from the same environment variables as PML's (``TEST_DTYPES``,
``TEST_DEVICE``); the device defaults to the CPU here (PML's default is cuda).
"""

import os

import torch

dtypes_from_environ = os.environ.get("TEST_DTYPES", "float16,float32,float64")
device_from_environ = os.environ.get("TEST_DEVICE", "cpu")

TEST_DTYPES = [getattr(torch, x) for x in dtypes_from_environ.split(",")]
TEST_DEVICE = torch.device(device_from_environ)
