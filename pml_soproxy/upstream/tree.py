"""What is sent upstream and where it goes: the contributions, the PML source
tree they are written into, and the checks that a directory is such a tree.

Each contribution's unit tests are ours too: ``tests/<subpackage>/test_<module>.py``
of this repository is written in PML's unittest format, collected by our pytest,
and copied (imports rewritten) to the same path in PML's tree.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

PACKAGE_DIR = Path(__file__).resolve().parents[1]
REPOSITORY_DIR = PACKAGE_DIR.parent
TEMPLATES = Path(__file__).resolve().parent / "templates"

OUR_PACKAGE = "pml_soproxy"
PML_PACKAGE = "pytorch_metric_learning"


class UpstreamError(Exception):
    """The contribution cannot be written into this tree."""


@dataclass(frozen=True)
class Contribution:
    subpackage: str  # "regularizers" or "losses", in both packages
    module: str
    class_name: str
    docs_page: str
    equation_image: str

    @property
    def our_source(self) -> Path:
        return PACKAGE_DIR / self.subpackage / (self.module + ".py")

    @property
    def pml_source(self) -> Path:
        return Path("src", PML_PACKAGE, self.subpackage, self.module + ".py")

    @property
    def pml_test(self) -> Path:
        return Path("tests", self.subpackage, "test_" + self.module + ".py")

    @property
    def our_test(self) -> Path:
        """The one test suite, at the same path in our tree as in PML's."""
        return REPOSITORY_DIR / self.pml_test

    @property
    def test_module(self) -> str:
        return ".".join(self.pml_test.with_suffix("").parts)

    @property
    def docs_template(self) -> Path:
        return TEMPLATES / ("docs_" + self.module + ".md")


CONTRIBUTIONS = (
    Contribution(
        "regularizers",
        "soft_orthogonality_regularizer",
        "SoftOrthogonalityRegularizer",
        "regularizers.md",
        "soft_orthogonality_regularizer_equation.png",
    ),
    Contribution(
        "losses",
        "soft_orthogonal_proxy_anchor_loss",
        "SoftOrthogonalProxyAnchorLoss",
        "losses.md",
        "soft_orthogonal_proxy_anchor_loss_equation.png",
    ),
)

# What a PML source checkout must contain for the PR to be prepared in it.
REQUIRED_PATHS = (
    Path("src", PML_PACKAGE, "__init__.py"),
    Path("src", PML_PACKAGE, "regularizers", "__init__.py"),
    Path("src", PML_PACKAGE, "regularizers", "base_regularizer.py"),
    Path("src", PML_PACKAGE, "losses", "__init__.py"),
    Path("src", PML_PACKAGE, "losses", "proxy_anchor_loss.py"),
    Path("tests", "__init__.py"),
    Path("docs", "regularizers.md"),
    Path("docs", "losses.md"),
)


def missing_pml_path(root: Path) -> Optional[Path]:
    for relative in REQUIRED_PATHS:
        if not (root / relative).is_file():
            return relative
    return None


def missing_template_path() -> Optional[Path]:
    """The tests and templates are data files, present in a source checkout
    (editable install) but not in a wheel."""
    for contribution in CONTRIBUTIONS:
        for path in (
            contribution.our_test,
            contribution.docs_template,
            TEMPLATES / "imgs" / contribution.equation_image,
        ):
            if not path.is_file():
                return path
    return None
