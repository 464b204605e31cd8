"""python -m pml_soproxy.upstream: preparing the pytorch-metric-learning pull request.

Most tests use a tiny fake PML source tree; the end-to-end test uses a real one
exported from a local git mirror of PML and skips when that mirror is absent.
"""

import ast
import importlib.util
import inspect
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pml_soproxy import upstream
from pml_soproxy.upstream.__main__ import main

ROOT = Path(__file__).resolve().parents[2]
PML_GIT_DIR = Path(
    os.environ.get(
        "PML_GIT_DIR", "/work/.mirror/KevinMusgrave+pytorch-metric-learning/repo"
    )
)
PML_FLAKE8_IGNORE = "--extend-ignore=E266,E203,E402,E501,E741,E265"
REGULARIZER = Path("src/pytorch_metric_learning/regularizers")
LOSSES = Path("src/pytorch_metric_learning/losses")

FAKE_REGULARIZERS_INIT = """\
from .base_regularizer import BaseRegularizer
from .lp_regularizer import LpRegularizer
from .sparse_centers_regularizer import SparseCentersRegularizer
from .zero_mean_regularizer import ZeroMeanRegularizer
"""

FAKE_LOSSES_INIT = """\
from .arcface_loss import ArcFaceLoss
from .base_metric_loss_function import BaseMetricLossFunction
from .lifted_structure_loss import GeneralizedLiftedStructureLoss, LiftedStructureLoss
from .proxy_anchor_loss import ProxyAnchorLoss
from .signal_to_noise_ratio_losses import SignalToNoiseRatioContrastiveLoss
from .soft_triple_loss import SoftTripleLoss
from .vicreg_loss import VICRegLoss"""  # no final newline, as in some PML files

FAKE_REGULARIZERS_MD = """\
# Regularizers

```python
## not a heading: this is inside a code block
```

## BaseRegularizer
Base.

## RegularFaceRegularizer
Regular face.


## SparseCentersRegularizer
Sparse centers.

## ZeroMeanRegularizer
Zero mean."""

FAKE_LOSSES_MD = """\
# Losses

## ArcFaceLoss
Arc face.

## ProxyAnchorLoss
Proxy anchor.

## SignalToNoiseRatioContrastiveLoss
SNR.

## SoftTripleLoss
Soft triple.

## WeightRegularizerMixin
Extended by:

* [ArcFaceLoss](losses.md#arcfaceloss)
* [ProxyAnchorLoss](losses.md#proxyanchorloss)
* [SoftTripleLoss](losses.md#softtripleloss)


## VICRegLoss
VICReg.
"""


def write(path, text, newline="\n"):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        f.write(text.replace("\n", newline))


@pytest.fixture
def fake_pml(tmp_path):
    """A minimal PML source tree: just what the upstream command reads."""
    root = tmp_path / "pml"
    package = root / "src" / "pytorch_metric_learning"
    write(package / "__init__.py", '__version__ = "0.0.fake"\n')
    for subpackage in ("distances", "reducers", "utils"):
        write(package / subpackage / "__init__.py", "")
    write(package / "utils" / "common_functions.py", "")
    write(package / "regularizers" / "__init__.py", FAKE_REGULARIZERS_INIT)
    write(package / "regularizers" / "base_regularizer.py", "")
    write(package / "losses" / "__init__.py", FAKE_LOSSES_INIT)
    write(package / "losses" / "proxy_anchor_loss.py", "")
    write(root / "tests" / "__init__.py", "")
    write(root / "tests" / "regularizers" / "__init__.py", "")
    # PML's docs/regularizers.md has CRLF line endings, docs/losses.md LF
    write(root / "docs" / "regularizers.md", FAKE_REGULARIZERS_MD, newline="\r\n")
    write(root / "docs" / "losses.md", FAKE_LOSSES_MD)
    return root


def snapshot(root):
    return {
        path.relative_to(root): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


def headings(page):
    """The "## " headings outside fenced code blocks."""
    found, in_fence = [], False
    for line in page.splitlines():
        if line.startswith("```"):
            in_fence = not in_fence
        elif line.startswith("## ") and not in_fence:
            found.append(line[3:].strip())
    return found


def module_order(init_source):
    return [
        node.module
        for node in ast.parse(init_source).body
        if isinstance(node, ast.ImportFrom)
    ]


def has_tool(name):
    return importlib.util.find_spec(name) is not None


def non_import_body(source):
    return [
        ast.dump(node)
        for node in ast.parse(source).body
        if not isinstance(node, (ast.Import, ast.ImportFrom))
    ]


# ---------------------------------------------------------------- refusing


def test_refuses_a_directory_that_is_not_a_pml_tree(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip()
    assert "is not a pytorch-metric-learning source tree" in error
    assert len(error.splitlines()) == 1 and error.count(". ") == 0
    assert list(tmp_path.iterdir()) == []


def test_refusal_exit_code_from_the_command_line(tmp_path):
    # fast: pml_soproxy's top-level names are lazy, so torch is not even imported
    completed = subprocess.run(
        [sys.executable, "-m", "pml_soproxy.upstream", str(tmp_path), "--no-test"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        universal_newlines=True,
        cwd=str(ROOT),
    )
    assert completed.returncode == 2
    assert "not a pytorch-metric-learning source tree" in completed.stderr


# ---------------------------------------------------------------- import rewriting


def test_sources_get_pml_relative_imports(fake_pml):
    upstream.prepare(fake_pml)
    regularizer = (
        fake_pml / REGULARIZER / "soft_orthogonality_regularizer.py"
    ).read_text()
    loss = (fake_pml / LOSSES / "soft_orthogonal_proxy_anchor_loss.py").read_text()

    assert regularizer.startswith(
        "import torch\n\n"
        "from ..distances import CosineSimilarity, DotProductSimilarity\n"
        "from ..utils import common_functions as c_f\n"
        "from .base_regularizer import BaseRegularizer\n"
    )
    assert "from ..regularizers.soft_orthogonality_regularizer import (" in loss
    assert "from .proxy_anchor_loss import ProxyAnchorLoss\n" in loss
    for text in (regularizer, loss):
        assert "pytorch_metric_learning" not in text
        assert "pml_soproxy" not in text
    # only the imports change
    for contribution, text in zip(upstream.CONTRIBUTIONS, (regularizer, loss)):
        ours = contribution.our_source.read_text()
        assert non_import_body(text) == non_import_body(ours)


def test_own_package_import_goes_to_the_defining_module(fake_pml):
    source = (
        "import math\n"
        "import torch\n"
        "from pytorch_metric_learning.losses import ProxyAnchorLoss, SoftTripleLoss\n"
        "from pytorch_metric_learning import distances\n"
        "\n\nclass A:\n    pass\n"
    )
    rewritten = upstream.rewrite_imports(
        source, "losses", fake_pml / "src" / "pytorch_metric_learning"
    )
    assert rewritten == (
        "import math\n\n"
        "import torch\n\n"
        "from .. import distances\n"
        "from .proxy_anchor_loss import ProxyAnchorLoss\n"
        "from .soft_triple_loss import SoftTripleLoss\n"
        "\n\nclass A:\n    pass\n"
    )


@pytest.mark.parametrize(
    "line, message",
    [
        ("from pml_soproxy.trunks import create_trunk", "not sent upstream"),
        ("from ..trunks import create_trunk", "not sent upstream"),
        ("from pytorch_metric_learning.nowhere import X", "does not exist"),
        ("from pytorch_metric_learning.losses import NoSuchLoss", "does not export"),
        ("import pytorch_metric_learning.losses", "from ... import"),
        ("# a comment in the import block\nimport math", "would lose this line"),
    ],
)
def test_imports_that_cannot_go_upstream_are_refused(fake_pml, line, message):
    with pytest.raises(upstream.UpstreamError, match=message):
        upstream.rewrite_imports(
            "import torch\n" + line + "\n",
            "losses",
            fake_pml / "src" / "pytorch_metric_learning",
        )


# ---------------------------------------------------------------- exports


def test_exports_are_added_in_alphabetical_module_order(fake_pml):
    upstream.prepare(fake_pml)
    regularizers = (fake_pml / REGULARIZER / "__init__.py").read_text()
    losses = (fake_pml / LOSSES / "__init__.py").read_text()

    assert (
        "from .soft_orthogonality_regularizer import SoftOrthogonalityRegularizer\n"
        in regularizers
    )
    assert (
        "from .soft_orthogonal_proxy_anchor_loss import SoftOrthogonalProxyAnchorLoss\n"
        in losses
    )
    for text in (regularizers, losses):
        modules = module_order(text)
        assert modules == sorted(modules)
    assert module_order(regularizers).index("soft_orthogonality_regularizer") == 2
    assert module_order(losses).index("soft_orthogonal_proxy_anchor_loss") == 5


def test_add_export_at_the_end_and_when_present():
    init = "from .a import A\nfrom .b import B"
    assert upstream.add_export(init, "c", ["C"]) == init + "\nfrom .c import C\n"
    assert upstream.add_export(init, "b", ["B"]) == init
    assert upstream.add_export(init, "b", ["B2"]).startswith(
        "from .a import A\nfrom .b import B, B2\n"
    )
    assert upstream.add_export("", "a", ["A"]) == "from .a import A\n"


@pytest.mark.skipif(not has_tool("isort"), reason="isort is not installed")
def test_exports_are_isort_clean(fake_pml):
    upstream.prepare(fake_pml)
    completed = subprocess.run(
        [sys.executable, "-m", "isort", "--check-only", "--diff", "--profile", "black"]
        + [str(REGULARIZER / "__init__.py"), str(LOSSES / "__init__.py")],
        cwd=str(fake_pml),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        universal_newlines=True,
    )
    assert completed.returncode == 0, completed.stdout


# ---------------------------------------------------------------- docs


def test_docs_sections_go_in_alphabetical_place(fake_pml):
    upstream.prepare(fake_pml)
    with open(fake_pml / "docs" / "regularizers.md", newline="") as f:
        regularizers_raw = f.read()
    losses = (fake_pml / "docs" / "losses.md").read_text()

    # CRLF is kept, and no bare LF was added
    assert regularizers_raw.count("\r\n") == regularizers_raw.count("\n")
    regularizers = regularizers_raw.replace("\r\n", "\n")
    assert headings(regularizers) == [
        "BaseRegularizer",
        "RegularFaceRegularizer",
        "SoftOrthogonalityRegularizer",
        "SparseCentersRegularizer",
        "ZeroMeanRegularizer",
    ]
    assert headings(losses) == [
        "ArcFaceLoss",
        "ProxyAnchorLoss",
        "SignalToNoiseRatioContrastiveLoss",
        "SoftOrthogonalProxyAnchorLoss",
        "SoftTripleLoss",
        "WeightRegularizerMixin",
        "VICRegLoss",
    ]
    # the neighbours are untouched, and separated by a blank line
    assert "Regular face.\n\n\n## SoftOrthogonalityRegularizer\n" in regularizers
    assert '"element"```.\n\n## SparseCentersRegularizer\nSparse' in regularizers
    assert "* [ProxyAnchorLoss](losses.md#proxyanchorloss)\n" in losses
    assert (
        "* [SoftOrthogonalProxyAnchorLoss](losses.md#softorthogonalproxyanchorloss)\n"
        "* [SoftTripleLoss](losses.md#softtripleloss)\n"
    ) in losses
    for name in ("soft_orthogonality_regularizer", "soft_orthogonal_proxy_anchor_loss"):
        image = fake_pml / "docs" / "imgs" / (name + "_equation.png")
        assert image.read_bytes().startswith(b"\x89PNG")
        assert "](imgs/{}_equation.png)".format(name) in regularizers + losses


def test_docs_snippets_have_pml_sections():
    for contribution in upstream.CONTRIBUTIONS:
        snippet = contribution.docs_template.read_text()
        assert snippet.startswith("## " + contribution.class_name + "\n")
        signature = "```python\n{}.{}(".format(
            contribution.subpackage, contribution.class_name
        )
        assert signature in snippet
        for section in (
            "**Equation**",
            "**Default distance**",
            "**Default reducer**",
            "**Reducer input**",
        ):
            assert section in snippet
        image = upstream.TEMPLATES / "imgs" / contribution.equation_image
        assert image.is_file()
        assert "(imgs/{})".format(contribution.equation_image) in snippet


def documented_signature(snippet):
    """[(name, default or None), ...] of the ```python signature block."""
    block = snippet.split("```python\n", 1)[1].split("\n```", 1)[0]
    call = ast.parse(block.split(".", 1)[1].strip()).body[0].value
    params = [(arg.id, None) for arg in call.args]
    for keyword in call.keywords:
        if keyword.arg is None:
            params.append(("**" + keyword.value.id, None))
        else:
            params.append((keyword.arg, ast.literal_eval(keyword.value)))
    return params


def test_docs_signatures_match_the_classes():
    import pml_soproxy

    for contribution in upstream.CONTRIBUTIONS:
        cls = getattr(pml_soproxy, contribution.class_name)
        actual = []
        for param in inspect.signature(cls.__init__).parameters.values():
            if param.name == "self":
                continue
            if param.kind is param.VAR_KEYWORD:
                actual.append(("**" + param.name, None))
            else:
                default = None if param.default is param.empty else param.default
                actual.append((param.name, default))
        snippet = contribution.docs_template.read_text()
        assert documented_signature(snippet) == actual
        for name, _ in actual:
            if not name.startswith("**"):
                assert "* **{}**:".format(name) in snippet


def test_an_existing_docs_section_is_replaced():
    page = "# T\n\n## A\na\n\n## B\nold\n\n## C\nc\n"
    assert upstream.insert_docs_section(page, "## B\nnew\n") == (
        "# T\n\n## A\na\n\n## B\nnew\n\n## C\nc\n"
    )
    assert upstream.insert_docs_section("# T\n\n## A\na\n", "## B\nb\n") == (
        "# T\n\n## A\na\n\n\n## B\nb\n"
    )


# ---------------------------------------------------------------- idempotence


def test_running_twice_changes_nothing(fake_pml):
    assert main([str(fake_pml), "--no-test"]) == 0
    first = snapshot(fake_pml)
    assert main([str(fake_pml), "--no-test"]) == 0
    assert snapshot(fake_pml) == first

    regularizers = (fake_pml / REGULARIZER / "__init__.py").read_text()
    losses_md = (fake_pml / "docs" / "losses.md").read_text()
    assert regularizers.count("SoftOrthogonalityRegularizer") == 1
    assert headings(losses_md).count("SoftOrthogonalProxyAnchorLoss") == 1
    assert losses_md.count("* [SoftOrthogonalProxyAnchorLoss]") == 1
    assert (fake_pml / "tests" / "losses" / "__init__.py").is_file()


# ---------------------------------------------------------------- PML's house rules


def test_rewritten_sources_follow_pml_rules(fake_pml):
    upstream.prepare(fake_pml)
    for contribution in upstream.CONTRIBUTIONS:
        source = (fake_pml / contribution.pml_source).read_text()
        assert "torch.linalg" not in source and "linalg" not in source
        for node in ast.walk(ast.parse(source)):
            assert not isinstance(node, ast.AnnAssign)
            if isinstance(node, ast.arg):
                assert node.annotation is None, node.arg
            if isinstance(node, ast.FunctionDef):
                assert node.returns is None, node.name
        assert upstream.compatibility_problems(source) == []


def test_compatibility_problems_are_detected():
    problems = upstream.compatibility_problems(
        "import torch\n\ndef f(x: int) -> int:\n    return torch.linalg.norm(x)\n"
    )
    assert len(problems) == 2


@pytest.mark.skipif(not has_tool("flake8"), reason="flake8 is not installed")
def test_rewritten_sources_pass_flake8_with_pml_ignore_list(fake_pml):
    upstream.prepare(fake_pml)
    files = [str(c.pml_source) for c in upstream.CONTRIBUTIONS]
    completed = subprocess.run(
        [sys.executable, "-m", "flake8", "--isolated", PML_FLAKE8_IGNORE] + files,
        cwd=str(fake_pml),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        universal_newlines=True,
    )
    assert completed.returncode == 0, completed.stdout


def check_with_stdin(command, text):
    return subprocess.run(
        [sys.executable, "-m"] + command,
        input=text,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        universal_newlines=True,
    )


def exported_suite(contribution):
    """The contribution's test suite as the exporter writes it into PML's tree."""
    return upstream.pml_test_suite(contribution.our_test.read_text())


@pytest.mark.parametrize("contribution", upstream.CONTRIBUTIONS, ids=lambda c: c.module)
@pytest.mark.parametrize(
    "tool, command",
    [
        ("black", ["black", "--check", "-q", "-"]),
        (
            "isort",
            ["isort", "--check-only", "--profile", "black"]
            + ["--project", "pytorch_metric_learning", "-"],
        ),
        ("flake8", ["flake8", "--isolated", PML_FLAKE8_IGNORE, "-"]),
    ],
)
def test_exported_suites_are_formatted_as_pml_requires(contribution, tool, command):
    if not has_tool(tool):
        pytest.skip("{} is not installed".format(tool))
    completed = check_with_stdin(command, exported_suite(contribution))
    assert completed.returncode == 0, completed.stdout


@pytest.mark.parametrize("contribution", upstream.CONTRIBUTIONS, ids=lambda c: c.module)
def test_the_suite_is_ours_and_pmls(contribution):
    """One suite: ours (collected by our pytest from tests/<subpackage>/) and,
    with only its import block rewritten, PML's."""
    ours = contribution.our_test.read_text()
    assert "from . import TEST_DEVICE, TEST_DTYPES\n" in ours
    exported = exported_suite(contribution)
    assert non_import_body(exported) == non_import_body(ours)
    tree = ast.parse(exported)
    assert "from .. import TEST_DEVICE, TEST_DTYPES\n" in exported
    assert "for dtype in TEST_DTYPES:" in exported
    assert "rtol = 1e-2 if dtype == torch.float16 else 1e-5" in exported
    assert "loop_soft_orthogonality" in exported
    assert "naive_soft_orthogonality" in exported
    classes = [node for node in tree.body if isinstance(node, ast.ClassDef)]
    assert [ast.unparse(base) for c in classes for base in c.bases] == [
        "unittest.TestCase"
    ]
    assert "pml_soproxy" not in exported and "pytest" not in exported
    assert "from pytorch_metric_learning.{} import".format(
        contribution.subpackage
    ) in exported.replace("(\n    ", "")


def test_suite_imports_become_pmls():
    source = (
        "import unittest\n\n"
        "import numpy as np\n"
        "import torch\n"
        "from pytorch_metric_learning.losses import ProxyAnchorLoss\n"
        "from pytorch_metric_learning.utils import common_functions as c_f\n\n"
        "from pml_soproxy import SoftOrthogonalityRegularizer\n"
        "from pml_soproxy.losses import SoftOrthogonalProxyAnchorLoss\n"
        "from pml_soproxy.regularizers.soft_orthogonality_regularizer import (\n"
        "    _RowwiseSoftOrthogonality,\n"
        ")\n\n"
        "from . import TEST_DEVICE, TEST_DTYPES\n"
        "\n\nclass A:\n    pass\n"
    )
    assert upstream.pml_test_suite(source) == (
        "import unittest\n\n"
        "import numpy as np\n"
        "import torch\n\n"
        "from pytorch_metric_learning.losses import (\n"
        "    ProxyAnchorLoss,\n"
        "    SoftOrthogonalProxyAnchorLoss,\n"
        ")\n"
        "from pytorch_metric_learning.regularizers import SoftOrthogonalityRegularizer\n"
        "from pytorch_metric_learning.regularizers.soft_orthogonality_regularizer import (\n"
        "    _RowwiseSoftOrthogonality,\n"
        ")\n"
        "from pytorch_metric_learning.utils import common_functions as c_f\n\n"
        "from .. import TEST_DEVICE, TEST_DTYPES\n"
        "\n\nclass A:\n    pass\n"
    )


@pytest.mark.parametrize(
    "line, message",
    [
        ("from tests.references import so_rows_loop", "PML's tests have no tests"),
        ("from .helpers import f", "PML's tests have no .helpers"),
        ("from . import TEST_DEVICE, WITH_GPU", "only TEST_DEVICE and TEST_DTYPES"),
        ("from pml_soproxy.trunks import create_trunk", "not sent upstream"),
        ("from pml_soproxy import create_trunk", "not sent upstream"),
        ("from pml_soproxy.losses import SoftOrthogonalityRegularizer", "not sent"),
        ("from pml_soproxy.training import Run", "not sent upstream"),
        ("import pml_soproxy.losses", "from ... import"),
    ],
)
def test_suite_imports_that_cannot_go_upstream_are_refused(line, message):
    with pytest.raises(upstream.UpstreamError, match=message):
        upstream.pml_test_suite("import torch\n" + line + "\n")


def test_late_suite_import_of_ours_is_refused():
    source = "import torch\n\n\ndef f():\n    from pml_soproxy import losses\n"
    with pytest.raises(upstream.UpstreamError, match="move the import"):
        upstream.pml_test_suite(source)


@pytest.mark.slow
def test_exported_suites_pass_against_the_installed_pml(tmp_path):
    """Run the exported tests with PML's unittest runner, our classes standing in
    for the ones the pull request adds (no PML source tree needed)."""
    write(
        tmp_path / "tests" / "__init__.py",
        "import sys\n\n"
        "import torch\n"
        "import pytorch_metric_learning.losses\n"
        "import pytorch_metric_learning.regularizers\n"
        "from pml_soproxy import SoftOrthogonalityRegularizer as R\n"
        "from pml_soproxy import SoftOrthogonalProxyAnchorLoss as L\n"
        "from pml_soproxy.regularizers import soft_orthogonality_regularizer\n\n"
        "pytorch_metric_learning.regularizers.SoftOrthogonalityRegularizer = R\n"
        "pytorch_metric_learning.losses.SoftOrthogonalProxyAnchorLoss = L\n"
        "sys.modules['pytorch_metric_learning.regularizers."
        "soft_orthogonality_regularizer'] = soft_orthogonality_regularizer\n"
        "TEST_DTYPES = [torch.float16, torch.float32, torch.float64]\n"
        "TEST_DEVICE = torch.device('cpu')\n",
    )
    for contribution in upstream.CONTRIBUTIONS:
        write(tmp_path / "tests" / contribution.subpackage / "__init__.py", "")
        write(tmp_path / contribution.pml_test, exported_suite(contribution))
    completed = subprocess.run(
        [sys.executable, "-m", "unittest"]
        + [c.test_module for c in upstream.CONTRIBUTIONS],
        cwd=str(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        universal_newlines=True,
    )
    assert completed.returncode == 0, completed.stdout
    assert "\nOK" in completed.stdout


# ---------------------------------------------------------------- real PML tree


@pytest.fixture
def real_pml(tmp_path):
    if not (PML_GIT_DIR / "HEAD").is_file() or shutil.which("git") is None:
        pytest.skip(
            "no git mirror of pytorch-metric-learning at {}".format(PML_GIT_DIR)
        )
    root = tmp_path / "pytorch-metric-learning"
    root.mkdir()
    # not the whole tree: the mirror may lack large files under examples/
    paths = ["src", "tests", "docs", ".flake8", "setup.py", "format_code.sh"]
    archive = subprocess.run(
        ["git", "--git-dir", str(PML_GIT_DIR), "archive", "HEAD"] + paths,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    subprocess.run(["tar", "-x", "-C", str(root)], input=archive.stdout, check=True)
    if upstream.missing_pml_path(root) is not None:
        pytest.skip("could not export a PML tree from {}".format(PML_GIT_DIR))
    return root


@pytest.mark.slow
def test_end_to_end_on_a_real_pml_tree(real_pml):
    before = snapshot(real_pml)
    completed = subprocess.run(
        [sys.executable, "-m", "pml_soproxy.upstream", str(real_pml)],
        cwd=str(ROOT),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        universal_newlines=True,
    )
    assert completed.returncode == 0, completed.stdout
    assert "Testing pytorch_metric_learning version" in completed.stdout
    assert "\nOK" in completed.stdout and "FAILED" not in completed.stdout

    after = snapshot(real_pml)
    changed = {p for p in before if before[p] != after[p]}
    added = set(after) - set(before)
    assert changed == {
        REGULARIZER / "__init__.py",
        LOSSES / "__init__.py",
        Path("docs/regularizers.md"),
        Path("docs/losses.md"),
    }
    assert added == {
        REGULARIZER / "soft_orthogonality_regularizer.py",
        LOSSES / "soft_orthogonal_proxy_anchor_loss.py",
        Path("tests/regularizers/test_soft_orthogonality_regularizer.py"),
        Path("tests/losses/test_soft_orthogonal_proxy_anchor_loss.py"),
        Path("docs/imgs/soft_orthogonality_regularizer_equation.png"),
        Path("docs/imgs/soft_orthogonal_proxy_anchor_loss_equation.png"),
    }

    assert main([str(real_pml), "--no-test"]) == 0
    assert snapshot(real_pml) == after
