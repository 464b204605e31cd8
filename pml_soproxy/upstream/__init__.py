"""Prepare the pytorch-metric-learning (PML) pull request for SO in one command.

``python -m pml_soproxy.upstream PML_SOURCE_DIR [--no-test]`` copies
``SoftOrthogonalityRegularizer`` and ``SoftOrthogonalProxyAnchorLoss`` into a PML
git checkout with PML's relative imports, adds their exports, their unit tests
(our ``tests/<subpackage>/test_<module>.py``, already in PML's unittest format),
docs sections and equation images, formats and lints the written files with
PML's settings, then runs the new tests with PML's own runner. Running it twice
gives the same tree.

The modules, by concern:

* :mod:`.tree`: what is sent (the contributions) and where; PML tree detection.
* :mod:`.imports`: rewriting a source file's imports; package exports.
* :mod:`.suite`: rewriting the imports of the shared test suites.
* :mod:`.docs`: the docs sections; :mod:`.writing`: writing it all (``prepare``).
* :mod:`.lint`: PML's compatibility rules, black / isort / flake8.
* :mod:`.runner`: PML's unittest runner on the new tests.
* :mod:`.equations`: the docs' equation images.
"""

from .docs import add_to_extended_by, insert_docs_section
from .imports import BLACK_LINE_LENGTH, add_export, exported_modules, rewrite_imports
from .lint import PML_FLAKE8_ARGS, compatibility_problems, format_and_lint
from .runner import (
    DEFAULT_DEVICE,
    DEFAULT_DTYPES,
    imported_pml,
    run_tests,
    test_command,
    test_environment,
)
from .suite import pml_test_suite
from .tree import (
    CONTRIBUTIONS,
    OUR_PACKAGE,
    PACKAGE_DIR,
    PML_PACKAGE,
    REQUIRED_PATHS,
    TEMPLATES,
    Contribution,
    UpstreamError,
    missing_pml_path,
    missing_template_path,
)
from .writing import prepare, read_text

__all__ = [
    "BLACK_LINE_LENGTH",
    "CONTRIBUTIONS",
    "Contribution",
    "DEFAULT_DEVICE",
    "DEFAULT_DTYPES",
    "OUR_PACKAGE",
    "PACKAGE_DIR",
    "PML_FLAKE8_ARGS",
    "PML_PACKAGE",
    "REQUIRED_PATHS",
    "TEMPLATES",
    "UpstreamError",
    "add_export",
    "add_to_extended_by",
    "compatibility_problems",
    "exported_modules",
    "format_and_lint",
    "imported_pml",
    "insert_docs_section",
    "missing_pml_path",
    "missing_template_path",
    "pml_test_suite",
    "prepare",
    "read_text",
    "rewrite_imports",
    "run_tests",
    "test_command",
    "test_environment",
]
