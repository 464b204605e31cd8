"""Prepare the pytorch-metric-learning (PML) pull request for SO in one command.

``python -m pml_soproxy.upstream PML_SOURCE_DIR [--no-test]`` copies
``SoftOrthogonalityRegularizer`` and ``SoftOrthogonalProxyAnchorLoss`` into a PML
git checkout with PML's relative imports, adds their exports, unit tests (PML's
unittest format, from ``templates/``), docs sections and equation images, formats
and lints the written files with PML's settings, then runs the new tests with PML's
own runner. Running it twice gives the same tree.
"""

import ast
import importlib.util
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

PACKAGE_DIR = Path(__file__).resolve().parents[1]
TEMPLATES = Path(__file__).resolve().parent / "templates"

OUR_PACKAGE = "pml_soproxy"
PML_PACKAGE = "pytorch_metric_learning"

# pytorch-metric-learning's .flake8, used when the tree has none
PML_FLAKE8_ARGS = [
    "--extend-ignore=E266,E203,E402,E501,E741,E265",
    "--per-file-ignores=__init__.py:F401",
]
BLACK_LINE_LENGTH = 88

DEFAULT_DEVICE = "cpu"
DEFAULT_DTYPES = "float16,float32,float64"


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
    def test_template(self) -> Path:
        return TEMPLATES / ("test_" + self.module + ".py.txt")

    @property
    def pml_test(self) -> Path:
        return Path("tests", self.subpackage, "test_" + self.module + ".py")

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


class UpstreamError(Exception):
    """The contribution cannot be written into this tree."""


def missing_pml_path(root: Path) -> Optional[Path]:
    for relative in REQUIRED_PATHS:
        if not (root / relative).is_file():
            return relative
    return None


def missing_template_path() -> Optional[Path]:
    """The templates are data files, present in a source checkout (editable
    install) but not in a wheel."""
    for contribution in CONTRIBUTIONS:
        for path in (
            contribution.test_template,
            contribution.docs_template,
            TEMPLATES / "imgs" / contribution.equation_image,
        ):
            if not path.is_file():
                return path
    return None


# ---------------------------------------------------------------- compatibility


def compatibility_problems(source: str) -> List[str]:
    """PML's house rules our upstreamed files must follow: no type hints, nothing
    newer than PML's oldest supported torch (torch.linalg)."""
    problems = []
    if "torch.linalg" in source or "from torch import linalg" in source:
        problems.append("uses torch.linalg, which PML's oldest supported torch lacks")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            arguments = node.args
            every_arg = (
                arguments.posonlyargs
                + arguments.args
                + arguments.kwonlyargs
                + [a for a in (arguments.vararg, arguments.kwarg) if a is not None]
            )
            if node.returns is not None or any(a.annotation for a in every_arg):
                problems.append(
                    "line {}: {} has type hints".format(node.lineno, node.name)
                )
        elif isinstance(node, ast.AnnAssign):
            problems.append("line {}: annotated assignment".format(node.lineno))
    return problems


# ---------------------------------------------------------------- import rewriting


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


def _pml_module_exists(src_package: Path, parts: Sequence[str]) -> bool:
    target = src_package.joinpath(*parts) if parts else src_package
    return target.with_suffix(".py").is_file() or (target / "__init__.py").is_file()


def rewrite_imports(source: str, subpackage: str, src_package: Path) -> str:
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
    lines = source.splitlines(keepends=True)
    contributed = {(c.subpackage, c.module) for c in CONTRIBUTIONS}
    exports = {
        c.subpackage: exported_modules(
            (src_package / c.subpackage / "__init__.py").read_text()
        )
        for c in CONTRIBUTIONS
    }

    def exists(parts):
        return tuple(parts[:2]) in contributed or _pml_module_exists(src_package, parts)

    block = []
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            block.append(node)
        elif block or not (
            isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
        ):
            break
    block_ids = {id(node) for node in block}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in block_ids:
            module = getattr(node, "module", None) or ""
            names = [a.name for a in getattr(node, "names", [])]
            if node.__class__ is ast.ImportFrom and node.level > 0:
                raise UpstreamError(
                    "line {}: move the relative import to the top".format(node.lineno)
                )
            for name in [module] + names:
                if name.split(".")[0] in (OUR_PACKAGE, PML_PACKAGE):
                    raise UpstreamError(
                        "line {}: move the import of {} to the top".format(
                            node.lineno, name
                        )
                    )
    if not block:
        return source

    stdlib, third_party, relative = [], [], []
    for node in block:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in (OUR_PACKAGE, PML_PACKAGE):
                    raise UpstreamError(
                        "line {}: use 'from ... import ...' for {}".format(
                            node.lineno, alias.name
                        )
                    )
            text = ast.get_source_segment(source, node)
            (stdlib if _is_stdlib(node.names[0].name) else third_party).append(text)
            continue
        module = node.module or ""
        if node.level > 0:
            if node.level > 2:
                raise UpstreamError(
                    "line {}: relative import leaves the package".format(node.lineno)
                )
            anchor = [OUR_PACKAGE, subpackage][: 3 - node.level]
            absolute = anchor + (module.split(".") if module else [])
        else:
            absolute = module.split(".")
        if absolute[0] not in (OUR_PACKAGE, PML_PACKAGE):
            text = ast.get_source_segment(source, node)
            (stdlib if _is_stdlib(module) else third_party).append(text)
            continue
        parts = absolute[1:]
        if absolute[0] == OUR_PACKAGE and tuple(parts[:2]) not in contributed:
            raise UpstreamError(
                "line {}: imports {}, which is not sent upstream".format(
                    node.lineno, ".".join(absolute)
                )
            )
        if parts and parts[0] == subpackage and len(parts) == 1:
            # from the own package's __init__: import from the defining modules
            by_module = {}
            for alias in node.names:
                defining = exports[subpackage].get(alias.name)
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
            for defining, aliases in by_module.items():
                relative.append((1, defining, aliases))
            continue
        if not exists(parts):
            raise UpstreamError(
                "line {}: {} does not exist in this PML tree".format(
                    node.lineno, ".".join([PML_PACKAGE] + parts)
                )
            )
        if parts and parts[0] == subpackage:
            relative.append((1, ".".join(parts[1:]), node.names))
        else:
            relative.append((2, ".".join(parts), node.names))

    sections = []
    for group in (stdlib, third_party):
        if group:
            sections.append("\n".join(group))
    if relative:
        relative.sort(key=lambda item: (-item[0], item[1]))
        sections.append(
            "\n".join(
                _render_from_import("." * level + module, names)
                for level, module, names in relative
            )
        )
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
    return head + "\n\n".join(sections) + "\n" + tail


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


# ---------------------------------------------------------------- docs


def _headings(lines: Sequence[str]) -> List[Tuple[int, str]]:
    """(line index, name) of the ``## `` headings outside fenced code blocks."""
    headings = []
    in_fence = False
    for index, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("```"):
            in_fence = not in_fence
        elif not in_fence and line.startswith("## "):
            headings.append((index, stripped[3:].strip()))
    return headings


def insert_docs_section(page: str, section: str) -> str:
    """Put ``section`` (starting with ``## Name``) where PML's alphabetical list of
    classes wants it, or replace the section of that name if the page has one."""
    first = section.lstrip("\n").splitlines()[0]
    if not first.startswith("## "):
        raise UpstreamError("a docs section must start with '## Name'")
    name = first[3:].strip()
    body = section.strip("\n") + "\n"
    lines = page.splitlines(keepends=True)
    headings = _headings(lines)
    for position, (index, heading) in enumerate(headings):
        if heading == name:
            if position + 1 < len(headings):
                end = headings[position + 1][0]
                return "".join(lines[:index]) + body + "\n" + "".join(lines[end:])
            return "".join(lines[:index]) + body
    later = [index for index, heading in headings if heading.lower() > name.lower()]
    if later:
        index = later[0]
        before = "".join(lines[:index])
        if before and not before.endswith("\n\n"):
            before += "\n" if before.endswith("\n") else "\n\n"
        return before + body + "\n" + "".join(lines[index:])
    page = page.rstrip("\n")
    return page + "\n\n\n" + body


def add_to_extended_by(page: str, mixin: str, class_name: str, docs_page: str) -> str:
    """Add ``class_name`` to the "Extended by:" list of ``mixin``'s docs section."""
    link = "* [{0}]({1}#{2})".format(class_name, docs_page, class_name.lower())
    lines = page.splitlines(keepends=True)
    headings = _headings(lines)
    for position, (index, heading) in enumerate(headings):
        if heading != mixin:
            continue
        end = headings[position + 1][0] if position + 1 < len(headings) else len(lines)
        items = [
            i
            for i in range(index, end)
            if lines[i].startswith("* [") and "](" in lines[i]
        ]
        if not items or any(lines[i].strip() == link for i in items):
            return page
        insert_at = items[-1] + 1
        for i in items:
            if lines[i][3:].split("]")[0].lower() > class_name.lower():
                insert_at = i
                break
        return "".join(lines[:insert_at]) + link + "\n" + "".join(lines[insert_at:])
    return page


# ---------------------------------------------------------------- writing


def read_text(path: Path) -> Tuple[str, str]:
    """The text with "\n" line endings, and the file's own line ending (PML's
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


def prepare(root: Path) -> Dict[str, List[Path]]:
    """Write everything into the PML tree at ``root``; return the paths by kind."""
    root = Path(root)
    src_package = root / "src" / PML_PACKAGE
    result = {"python": [], "docs": [], "images": []}
    for contribution in CONTRIBUTIONS:
        source = contribution.our_source.read_text()
        for problem in compatibility_problems(source):
            print(
                "warning: {}: {}".format(contribution.our_source.name, problem),
                file=sys.stderr,
            )
        rewritten = rewrite_imports(source, contribution.subpackage, src_package)
        _write_if_changed(root / contribution.pml_source, rewritten, result["python"])

        init = src_package / contribution.subpackage / "__init__.py"
        text, newline = read_text(init)
        text = add_export(text, contribution.module, [contribution.class_name])
        _write_if_changed(init, text, result["python"], newline)

        test_package = root / "tests" / contribution.subpackage / "__init__.py"
        if not test_package.is_file():
            _write_if_changed(test_package, "", [])
        _write_if_changed(
            root / contribution.pml_test,
            contribution.test_template.read_text(),
            result["python"],
        )

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
    return result


# ---------------------------------------------------------------- tools


def _tool_command(name: str) -> Optional[List[str]]:
    if importlib.util.find_spec(name) is not None:
        return [sys.executable, "-m", name]
    executable = shutil.which(name)
    return [executable] if executable else None


def format_and_lint(root: Path, paths: Sequence[Path]) -> bool:
    """black, isort (profile black) and flake8 with PML's settings, as PML's
    format_code.sh and run_linter.sh do, on the written files only. Returns False
    if flake8 reports problems; a missing tool is a warning."""
    root = Path(root)
    relative = sorted(
        {str(Path(p).resolve().relative_to(root.resolve())) for p in paths}
    )
    ok = True
    steps = [
        ("black", ["-q"]),
        ("isort", ["-q", "--profile", "black"]),
        ("flake8", [] if (root / ".flake8").is_file() else PML_FLAKE8_ARGS),
    ]
    for name, args in steps:
        command = _tool_command(name)
        if command is None:
            print(
                "warning: {0} is not installed, so the files were not checked with "
                "it (pip install black isort flake8)".format(name),
                file=sys.stderr,
            )
            continue
        completed = subprocess.run(
            command + args + relative,
            cwd=str(root),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            universal_newlines=True,
        )
        if completed.returncode != 0:
            print(completed.stdout, end="", file=sys.stderr)
            print("error: {} failed".format(name), file=sys.stderr)
            ok = False
        else:
            print("{}: ok".format(name))
    return ok


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
