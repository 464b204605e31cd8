"""Writing the contribution into a PML tree: sources, exports, tests, docs and
equation images, each file only rewritten when its text changes (so running
twice gives the same tree), keeping each file's own line endings."""

import shutil
import sys
from pathlib import Path
from typing import Dict, List, Tuple

from .docs import add_to_extended_by, insert_docs_section
from .imports import add_export, rewrite_imports
from .lint import compatibility_problems
from .suite import pml_test_suite
from .tree import CONTRIBUTIONS, PML_PACKAGE, TEMPLATES, Contribution


def read_text(path: Path) -> Tuple[str, str]:
    """The text with "\\n" line endings, and the file's own line ending (PML's
    docs/regularizers.md uses CRLF, its other files LF)."""
    with open(path, newline="") as f:
        raw = f.read()
    crlf = raw.count("\r\n")
    newline = "\r\n" if crlf and crlf >= raw.count("\n") - crlf else "\n"
    return raw.replace("\r\n", "\n"), newline


def _write_if_changed(
    path: Path, text: str, written: List[Path], newline: str = "\n"
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = text.replace("\n", newline)
    if not path.is_file() or read_text(path)[0].replace("\n", newline) != raw:
        with open(path, "w", newline="") as f:
            f.write(raw)
    written.append(path)


def _write_source(root: Path, contribution: Contribution, written: List[Path]):
    """The source file with PML's imports, and its export."""
    src_package = root / "src" / PML_PACKAGE
    source = contribution.our_source.read_text()
    for problem in compatibility_problems(source):
        print(
            "warning: {}: {}".format(contribution.our_source.name, problem),
            file=sys.stderr,
        )
    rewritten = rewrite_imports(source, contribution.subpackage, src_package)
    _write_if_changed(root / contribution.pml_source, rewritten, written)

    init = src_package / contribution.subpackage / "__init__.py"
    text, newline = read_text(init)
    text = add_export(text, contribution.module, [contribution.class_name])
    _write_if_changed(init, text, written, newline)


def _write_tests(root: Path, contribution: Contribution, written: List[Path]):
    """Our test suite, with PML's imports, at the same path in PML's tests/."""
    test_package = root / "tests" / contribution.subpackage / "__init__.py"
    if not test_package.is_file():
        _write_if_changed(test_package, "", [])
    suite = pml_test_suite(contribution.our_test.read_text())
    _write_if_changed(root / contribution.pml_test, suite, written)


def _write_docs(root: Path, contribution: Contribution, result: Dict[str, list]):
    page = root / "docs" / contribution.docs_page
    text, newline = read_text(page)
    text = insert_docs_section(text, contribution.docs_template.read_text())
    if contribution.subpackage == "losses":
        text = add_to_extended_by(
            text, "WeightRegularizerMixin", contribution.class_name, "losses.md"
        )
    _write_if_changed(page, text, result["docs"], newline)

    image = TEMPLATES / "imgs" / contribution.equation_image
    target = root / "docs" / "imgs" / contribution.equation_image
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(image, target)
    result["images"].append(target)


def prepare(root: Path) -> Dict[str, List[Path]]:
    """Write everything into the PML tree at ``root``; return the paths by kind."""
    root = Path(root)
    result: Dict[str, List[Path]] = {"python": [], "docs": [], "images": []}
    for contribution in CONTRIBUTIONS:
        _write_source(root, contribution, result["python"])
        _write_tests(root, contribution, result["python"])
        _write_docs(root, contribution, result)
    return result
