"""What importing the package pulls in: the loss and the regularizer alone need
neither timm (trunks) nor faiss (evaluation); the top-level names stay importable.

Each check runs in a fresh interpreter: in this one, other tests have already
imported everything.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("timm", "faiss")
TOP_LEVEL_NAMES = {
    "RECALL_AT_K": "pml_soproxy.evaluation",
    "RecallAtKCalculator": "pml_soproxy.evaluation",
    "SoftOrthogonalProxyAnchorLoss": "pml_soproxy.losses",
    "SoftOrthogonalityRegularizer": "pml_soproxy.regularizers",
    "create_transforms": "pml_soproxy.trunks",
    "create_trunk": "pml_soproxy.trunks",
    "deit_trunk": "pml_soproxy.trunks",
}


def run_python(code):
    """Run ``code`` in a fresh interpreter (the package next to these tests comes
    first on sys.path) and return what it printed as JSON."""
    completed = subprocess.run(
        [sys.executable, "-c", code],
        cwd=str(ROOT),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        universal_newlines=True,
    )
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout.strip().splitlines()[-1])


# One interpreter, one step after another: modules only accumulate, so the first
# step after which timm or faiss is loaded is the one that imported it.
CORE_STEPS = [
    "import pytorch_metric_learning.losses, pytorch_metric_learning.regularizers",
    "import pml_soproxy",
    "pml_soproxy.__version__",
    "import pml_soproxy.regularizers",
    "import pml_soproxy.losses",
    "from pml_soproxy.losses import SoftOrthogonalProxyAnchorLoss",
    "from pml_soproxy import SoftOrthogonalProxyAnchorLoss",
    "from pml_soproxy import SoftOrthogonalityRegularizer",
]


def test_core_imports_pull_in_neither_timm_nor_faiss():
    code = ["import json, sys", "loaded = []"]
    for step in CORE_STEPS:
        code += [
            step,
            "loaded.append([m for m in {!r} if m in sys.modules])".format(HEAVY),
        ]
    code.append("print(json.dumps(loaded))")
    loaded = run_python("\n".join(code))
    # PML's own losses and regularizers are not ours to change (PML 2.9 imports
    # neither); everything after them is
    pml_baseline = set(loaded[0])
    for step, modules in zip(CORE_STEPS[1:], loaded[1:]):
        added = set(modules) - pml_baseline
        assert added == set(), "{!r} imported {}".format(step, sorted(added))


LAZY_NAMES_SCRIPT = """
import importlib, json, sys
import pml_soproxy

HEAVY, DEFINED_IN = {heavy!r}, {defined_in!r}
result = {{
    "before": [m for m in HEAVY if m in sys.modules],
    "version": pml_soproxy.__version__,
    "all": list(pml_soproxy.__all__),
    "dir": dir(pml_soproxy),
}}
from pml_soproxy import {imports}

star = {{}}
exec("from pml_soproxy import *", star)
result["star"] = sorted(n for n in star if not n.startswith("__"))
result["same_object"] = sorted(
    n
    for n, module in DEFINED_IN.items()
    if globals()[n] is star[n] is getattr(pml_soproxy, n)
    is getattr(importlib.import_module(module), n)
)
result["submodules"] = [
    getattr(pml_soproxy, m).__name__
    for m in ("evaluation", "losses", "regularizers", "trunks")
]
result["after"] = [m for m in HEAVY if m in sys.modules]
print(json.dumps(result))
"""


def test_lazy_top_level_names_resolve():
    names = sorted(TOP_LEVEL_NAMES)
    script = LAZY_NAMES_SCRIPT.format(
        heavy=HEAVY, defined_in=TOP_LEVEL_NAMES, imports=", ".join(names)
    )
    result = run_python(script)
    assert result["before"] == []  # nothing heavy until a name is used
    assert result["version"] == "0.1.0"
    assert sorted(result["all"]) == names
    assert set(names) | {"__version__"} <= set(result["dir"])  # before resolution
    assert result["star"] == names
    # from-import, star import, attribute and defining module: the same object
    assert result["same_object"] == names
    assert result["submodules"] == sorted(set(TOP_LEVEL_NAMES.values()))
    assert set(result["after"]) == set(HEAVY)  # trunks and evaluation now loaded


def test_unknown_attribute_raises_attribute_error():
    import pml_soproxy

    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        pml_soproxy.no_such_name
    assert not hasattr(pml_soproxy, "no_such_name")
    # a submodule that is not a lazy name still imports the usual way
    from pml_soproxy import upstream

    assert upstream.__name__ == "pml_soproxy.upstream"
