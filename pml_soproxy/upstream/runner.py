"""Running the new tests with PML's own runner (``python -m unittest``) in the
PML tree, making sure the checkout's ``src/`` is what they import."""

import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

from .tree import CONTRIBUTIONS, PML_PACKAGE, UpstreamError

DEFAULT_DEVICE = "cpu"
DEFAULT_DTYPES = "float16,float32,float64"


def test_command(python: str = sys.executable) -> List[str]:
    return [python, "-m", "unittest"] + [c.test_module for c in CONTRIBUTIONS]


def test_environment(
    root: Path, device: str = DEFAULT_DEVICE, dtypes: str = DEFAULT_DTYPES
) -> Dict[str, str]:
    env = dict(os.environ)
    env["TEST_DEVICE"] = device
    env["TEST_DTYPES"] = dtypes
    src = str((Path(root) / "src").resolve())
    env["PYTHONPATH"] = os.pathsep.join(
        [src] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    )
    return env


def imported_pml(root: Path, python: str, env: Dict[str, str]) -> Path:
    """Where the test runner's ``import pytorch_metric_learning`` comes from."""
    code = (
        "import sys; sys.path.insert(0, 'src'); import {0}; print({0}.__file__)".format(
            PML_PACKAGE
        )
    )
    completed = subprocess.run(
        [python, "-c", code],
        cwd=str(root),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        universal_newlines=True,
    )
    if completed.returncode != 0:
        raise UpstreamError(
            "cannot import {} from {}: {}".format(
                PML_PACKAGE, root, completed.stderr.strip().splitlines()[-1:]
            )
        )
    return Path(completed.stdout.strip().splitlines()[-1]).resolve()


def run_tests(
    root: Path,
    python: str = sys.executable,
    device: str = DEFAULT_DEVICE,
    dtypes: str = DEFAULT_DTYPES,
) -> int:
    root = Path(root).resolve()
    env = test_environment(root, device, dtypes)
    location = imported_pml(root, python, env)
    if root / "src" not in location.parents:
        raise UpstreamError(
            "the tests would import {} from {}, not from {}".format(
                PML_PACKAGE, location.parent, root / "src"
            )
        )
    command = test_command(python)
    print(
        "$ cd {} && TEST_DEVICE={} TEST_DTYPES={} {}".format(
            root, device, dtypes, " ".join(["python"] + command[1:])
        ),
        flush=True,
    )
    return subprocess.run(command, cwd=str(root), env=env).returncode
