"""The contributions' unit tests: one suite, ours and PML's.

``tests/<subpackage>/test_<module>.py`` of this repository is written in PML's
unittest format (``unittest.TestCase`` classes looping over ``TEST_DTYPES`` on
``TEST_DEVICE``) and collected by our pytest. :func:`pml_test_suite` gives the
same file for PML's tree, where only its top import block differs:

* ``from pml_soproxy[.<subpackage>[.<module>]] import X`` of a contributed class
  or module becomes ``from pytorch_metric_learning.<...> import X``;
* ``from . import TEST_DEVICE, TEST_DTYPES`` (our ``tests/<subpackage>/__init__``)
  becomes ``from .. import TEST_DEVICE, TEST_DTYPES`` (PML's ``tests/__init__``);
* ``from ..<subpackage>.test_<module> import helper`` (another contribution's
  suite, at the same path in both trees) stays as it is;
* the block is regrouped as isort does in PML (``pytorch_metric_learning`` is
  first-party there), imports of one module merged.

Anything else of ours (``tests.references``, a private helper of the recipe)
cannot go upstream and is refused.
"""

import ast
from typing import Dict, List, Tuple

from .imports import (
    _contributed,
    _is_stdlib,
    _refuse_late_imports,
    _refuse_plain_import_of_ours,
    _render_from_import,
    _replace_block,
    _top_import_block,
)
from .tree import CONTRIBUTIONS, OUR_PACKAGE, PML_PACKAGE, UpstreamError

TEST_SETTINGS = ("TEST_DEVICE", "TEST_DTYPES")
OUR_TESTS = "tests"


def _isort_key(name: str, by_type: bool = False) -> str:
    """isort's (profile black) order: case-insensitive; names within one import
    by type first (CONSTANTS, Classes, functions)."""
    prefix = ""
    if by_type and name.isupper() and len(name) > 1:
        prefix = "A"
    elif by_type:
        prefix = "B" if name[:1].isupper() else "C"
    return prefix + name.lower()


def _pml_module(node: ast.ImportFrom) -> List[Tuple[str, ast.alias]]:
    """(PML module, name) for each name of ``from pml_soproxy... import``."""
    parts = node.module.split(".")[1:]
    classes = {c.class_name: c.subpackage for c in CONTRIBUTIONS}
    if len(parts) < 2:  # a package: only the contributed classes exist in PML's
        for alias in node.names:
            subpackage = classes.get(alias.name)
            if subpackage is None or parts not in ([], [subpackage]):
                raise UpstreamError(
                    "line {}: imports {} from {}, which is not sent upstream".format(
                        node.lineno, alias.name, node.module
                    )
                )
        return [(PML_PACKAGE + "." + classes[a.name], a) for a in node.names]
    if tuple(parts[:2]) not in _contributed():
        raise UpstreamError(
            "line {}: imports {}, which is not sent upstream".format(
                node.lineno, node.module
            )
        )
    return [(".".join([PML_PACKAGE] + parts), a) for a in node.names]


def _suite_modules() -> set:
    """The suites as seen from a sibling test package (``regularizers.test_...``)."""
    return {".".join(c.pml_test.with_suffix("").parts[1:]) for c in CONTRIBUTIONS}


def _classify(node: ast.ImportFrom) -> Tuple[str, List[Tuple[str, ast.alias]]]:
    """(section, [(module, name), ...]) of one from-import, in PML's tree."""
    top = (node.module or "").split(".")[0]
    if node.level == 1 and not node.module:
        if any(alias.name not in TEST_SETTINGS for alias in node.names):
            raise UpstreamError(
                "line {}: only {} come from the tests' package".format(
                    node.lineno, " and ".join(TEST_SETTINGS)
                )
            )
        return "relative", [("..", alias) for alias in node.names]
    if node.level == 2 and node.module in _suite_modules():
        # another contribution's suite: the same path in both trees
        return "relative", [(".." + node.module, alias) for alias in node.names]
    if node.level > 0 or top == OUR_TESTS:
        raise UpstreamError(
            "line {}: PML's tests have no {}{}".format(
                node.lineno, "." * node.level, node.module or ""
            )
        )
    if top == OUR_PACKAGE:
        return "first_party", _pml_module(node)
    section = "first_party" if top == PML_PACKAGE else "third_party"
    if _is_stdlib(top):
        section = "stdlib"
    return section, [(node.module, alias) for alias in node.names]


def _render_section(straight: List[ast.alias], froms: Dict[str, list]) -> str:
    lines = [
        "import " + a.name + ("" if a.asname is None else " as " + a.asname)
        for a in sorted(straight, key=lambda a: _isort_key(a.name))
    ]
    for module in sorted(froms, key=_isort_key):
        names = sorted(froms[module], key=lambda a: _isort_key(a.name, True))
        lines.append(_render_from_import(module, names))
    return "\n".join(lines)


def pml_test_suite(source: str) -> str:
    """Our test suite ``source`` with PML's imports (see the module docstring)."""
    tree = ast.parse(source)
    block = _top_import_block(tree)
    _refuse_late_imports(tree, block, (OUR_PACKAGE, OUR_TESTS))
    order = ("stdlib", "third_party", "first_party", "relative")
    straight: Dict[str, List[ast.alias]] = {name: [] for name in order}
    froms: Dict[str, Dict[str, list]] = {name: {} for name in order}
    for node in block:
        if isinstance(node, ast.Import):
            _refuse_plain_import_of_ours(node)
            for alias in node.names:
                top = alias.name.split(".")[0]
                section = "stdlib" if _is_stdlib(top) else "third_party"
                straight[section].append(alias)
            continue
        section, names = _classify(node)
        for module, alias in names:
            present = froms[section].setdefault(module, [])
            if all(ast.dump(alias) != ast.dump(other) for other in present):
                present.append(alias)
    sections = [_render_section(straight[name], froms[name]) for name in order]
    return _replace_block(source, block, sections)
