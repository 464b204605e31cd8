"""PML's house rules for the written files: compatibility with PML's oldest
supported torch (:func:`compatibility_problems`) and black / isort / flake8 with
PML's settings (:func:`format_and_lint`)."""

import ast
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List, Optional, Sequence

# pytorch-metric-learning's .flake8, used when the tree has none
PML_FLAKE8_ARGS = [
    "--extend-ignore=E266,E203,E402,E501,E741,E265",
    "--per-file-ignores=__init__.py:F401",
]


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
