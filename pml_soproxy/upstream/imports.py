"""Import rewriting: our files' imports in PML's style.

* :func:`rewrite_imports`: a contributed source file, whose imports become PML's
  relative ones (``from ..distances import X``).
* :func:`add_export`: a class exported from a PML package ``__init__``.

Only the top import block of a file changes, and it comes out the way isort
(profile black) and black write it. The block helpers here are shared with
:mod:`.suite`, which rewrites the imports of the test suites.
"""

import ast
import importlib.util
import sys
from typing import Dict, List, Sequence

from .tree import CONTRIBUTIONS, OUR_PACKAGE, PML_PACKAGE, UpstreamError

BLACK_LINE_LENGTH = 88


def _is_stdlib(module: str) -> bool:
    top = module.split(".")[0]
    names = getattr(sys, "stdlib_module_names", None)
    if names is not None:
        return top in names
    spec = importlib.util.find_spec(top)
    return spec is not None and (
        spec.origin in ("built-in", "frozen") or "site-packages" not in str(spec.origin)
    )


def _render_from_import(module: str, names: Sequence[ast.alias]) -> str:
    """``from module import a, b as c`` wrapped the way black wraps it."""
    rendered = [
        n.name if n.asname is None else n.name + " as " + n.asname for n in names
    ]
    line = "from {} import {}".format(module, ", ".join(rendered))
    if len(line) <= BLACK_LINE_LENGTH:
        return line
    body = "".join("    {},\n".format(name) for name in rendered)
    return "from {} import (\n{})".format(module, body)


def exported_modules(init_source: str) -> Dict[str, str]:
    """Map each name a package ``__init__`` exports to the module defining it."""
    exports = {}
    for node in ast.parse(init_source).body:
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
            for alias in node.names:
                exports[alias.asname or alias.name] = node.module
    return exports


# ---------------------------------------------------------------- the import block


def _top_import_block(tree: ast.Module) -> List[ast.stmt]:
    """The imports at the top of the module (after its docstring)."""
    block = []
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            block.append(node)
        elif block or not (
            isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
        ):
            break
    return block


def _refuse_late_imports(
    tree: ast.Module, block: Sequence[ast.stmt], packages: Sequence[str]
) -> None:
    """Imports of ``packages`` (and relative ones) must be in the top block."""
    block_ids = {id(node) for node in block}
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)) or id(node) in block_ids:
            continue
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            raise UpstreamError(
                "line {}: move the relative import to the top".format(node.lineno)
            )
        module = getattr(node, "module", None) or ""
        for name in [module] + [a.name for a in node.names]:
            if name.split(".")[0] in packages:
                raise UpstreamError(
                    "line {}: move the import of {} to the top".format(
                        node.lineno, name
                    )
                )


def _replace_block(source: str, block: Sequence[ast.stmt], sections) -> str:
    """``source`` with its import block replaced by the non-empty ``sections``."""
    lines = source.splitlines(keepends=True)
    start = block[0].lineno - 1
    end = block[-1].end_lineno
    covered = {n for node in block for n in range(node.lineno - 1, node.end_lineno)}
    for index in range(start, end):
        if index not in covered and lines[index].strip():
            raise UpstreamError(
                "line {}: the import block would lose this line".format(index + 1)
            )
    head = "".join(lines[:start])
    tail = "".join(lines[end:])
    return head + "\n\n".join(s for s in sections if s) + "\n" + tail


def _refuse_plain_import_of_ours(node: ast.Import) -> None:
    for alias in node.names:
        if alias.name.split(".")[0] in (OUR_PACKAGE, PML_PACKAGE):
            raise UpstreamError(
                "line {}: use 'from ... import ...' for {}".format(
                    node.lineno, alias.name
                )
            )


# ---------------------------------------------------------------- source files


def _pml_module_exists(src_package, parts: Sequence[str]) -> bool:
    target = src_package.joinpath(*parts) if parts else src_package
    return target.with_suffix(".py").is_file() or (target / "__init__.py").is_file()


def _contributed() -> set:
    return {(c.subpackage, c.module) for c in CONTRIBUTIONS}


def _defining_modules(node, subpackage: str, exports: Dict[str, str]):
    """``from <package of this file> import names``: PML never imports its own
    package ``__init__``, so one relative import per defining module."""
    by_module: Dict[str, List[ast.alias]] = {}
    for alias in node.names:
        defining = exports.get(alias.name)
        if defining is None:
            defining = next(
                (
                    c.module
                    for c in CONTRIBUTIONS
                    if c.subpackage == subpackage and c.class_name == alias.name
                ),
                None,
            )
        if defining is None:
            raise UpstreamError(
                "line {}: {}.{} does not export {}".format(
                    node.lineno, PML_PACKAGE, subpackage, alias.name
                )
            )
        by_module.setdefault(defining, []).append(alias)
    return [(1, defining, aliases) for defining, aliases in by_module.items()]


def _relative_imports(node, absolute, subpackage, src_package, exports):
    """PML's relative form(s) of ``from <absolute> import ...``: (level, module,
    names) tuples."""
    parts = absolute[1:]
    if absolute[0] == OUR_PACKAGE and tuple(parts[:2]) not in _contributed():
        raise UpstreamError(
            "line {}: imports {}, which is not sent upstream".format(
                node.lineno, ".".join(absolute)
            )
        )
    if parts == [subpackage]:
        return _defining_modules(node, subpackage, exports)
    if tuple(parts[:2]) not in _contributed() and not _pml_module_exists(
        src_package, parts
    ):
        raise UpstreamError(
            "line {}: {} does not exist in this PML tree".format(
                node.lineno, ".".join([PML_PACKAGE] + parts)
            )
        )
    if parts and parts[0] == subpackage:
        return [(1, ".".join(parts[1:]), node.names)]
    return [(2, ".".join(parts), node.names)]


def _absolute_module(node: ast.ImportFrom, subpackage: str) -> List[str]:
    module = node.module or ""
    if node.level == 0:
        return module.split(".")
    if node.level > 2:
        raise UpstreamError(
            "line {}: relative import leaves the package".format(node.lineno)
        )
    anchor = [OUR_PACKAGE, subpackage][: 3 - node.level]
    return anchor + (module.split(".") if module else [])


def rewrite_imports(source: str, subpackage: str, src_package) -> str:
    """Turn the file's imports into PML's relative style.

    ``source`` is one of our files from ``pml_soproxy/<subpackage>/``; it will live
    in ``<src_package>/<subpackage>/`` (``src_package`` is PML's
    ``src/pytorch_metric_learning``). ``from pytorch_metric_learning.distances import
    X`` becomes ``from ..distances import X``; ``from pytorch_metric_learning.losses
    import ProxyAnchorLoss`` in a loss becomes ``from .proxy_anchor_loss import
    ProxyAnchorLoss`` (PML never imports a module's own package ``__init__``);
    relative imports of our own modules keep pointing at the same (contributed) module.
    """
    tree = ast.parse(source)
    block = _top_import_block(tree)
    _refuse_late_imports(tree, block, (OUR_PACKAGE, PML_PACKAGE))
    if not block:
        return source
    exports = exported_modules((src_package / subpackage / "__init__.py").read_text())
    stdlib, third_party, relative = [], [], []
    for node in block:
        if isinstance(node, ast.Import):
            _refuse_plain_import_of_ours(node)
            module = node.names[0].name
        else:
            absolute = _absolute_module(node, subpackage)
            if absolute[0] in (OUR_PACKAGE, PML_PACKAGE):
                relative += _relative_imports(
                    node, absolute, subpackage, src_package, exports
                )
                continue
            module = node.module
        text = ast.get_source_segment(source, node)
        (stdlib if _is_stdlib(module) else third_party).append(text)

    relative.sort(key=lambda item: (-item[0], item[1]))
    sections = [
        "\n".join(stdlib),
        "\n".join(third_party),
        "\n".join(
            _render_from_import("." * level + module, names)
            for level, module, names in relative
        ),
    ]
    return _replace_block(source, block, sections)


# ---------------------------------------------------------------- package exports


def add_export(init_source: str, module: str, names: Sequence[str]) -> str:
    """Add ``from .module import names`` to a package ``__init__``, keeping PML's
    (isort's) alphabetical order of modules. Unchanged if already exported."""
    tree = ast.parse(init_source)
    lines = init_source.splitlines(keepends=True)
    relative = [
        node
        for node in tree.body
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module
    ]
    for node in relative:
        if node.module == module:
            present = [alias.name for alias in node.names]
            missing = [name for name in names if name not in present]
            if not missing:
                return init_source
            line = _render_from_import(
                "." + module, node.names + [ast.alias(name=n) for n in missing]
            )
            return (
                "".join(lines[: node.lineno - 1])
                + line
                + "\n"
                + "".join(lines[node.end_lineno :])
            )
    line = _render_from_import("." + module, [ast.alias(name=n) for n in names]) + "\n"
    after = [node for node in relative if node.module.lower() > module.lower()]
    if after:
        index = after[0].lineno - 1
        return "".join(lines[:index]) + line + "".join(lines[index:])
    if relative:
        index = relative[-1].end_lineno
        before = "".join(lines[:index])
        if not before.endswith("\n"):
            before += "\n"
        return before + line + "".join(lines[index:])
    if init_source and not init_source.endswith("\n"):
        init_source += "\n"
    return init_source + line
