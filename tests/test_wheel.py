"""The benchmarker configs travel with the package: a wheel built from this tree,
installed in a fresh virtualenv (its dependencies taken from the current
environment's site-packages, nothing downloaded), runs the CPU smoke preset from a
folder outside the checkout, with no environment variable pointing anywhere."""

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

from .benchmarker.helpers import require_benchmarker
from .datasets.trees import make_cub

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("setup.cfg", "pyproject.toml", "README.md", "pml_soproxy",
           "benchmarker_configs")  # fmt: skip

pytestmark = pytest.mark.slow


def run(*args, **kwargs):
    result = subprocess.run(args, capture_output=True, text=True, timeout=900, **kwargs)
    assert result.returncode == 0, (args, result.stdout[-3000:], result.stderr[-3000:])
    return result


def build_wheel(tmp_path: Path) -> Path:
    """``pip wheel`` of a copy of the tree (the checkout stays untouched), offline."""
    source = tmp_path / "source"
    source.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, symlinks=True, ignore=ignore)
        else:
            shutil.copy2(path, source / name)
    run(sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps",
        "--no-index", "--quiet", "-w", str(tmp_path / "dist"), str(source))  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("pml_soproxy-*.whl")
    return wheel


def fresh_env(tmp_path: Path, wheel: Path) -> Path:
    """A new virtualenv with the wheel installed (``--no-deps``) and this
    environment's site-packages appended to its path for the dependencies."""
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    run(sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
        "--no-index", "--quiet", str(wheel))  # fmt: skip
    site = run(
        str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"
    )
    # a plain path entry: the .pth files there (this checkout's editable install)
    # are not processed, so pml_soproxy can only come from the wheel
    Path(site.stdout.strip(), "current_environment.pth").write_text(
        sysconfig.get_path("purelib") + "\n"
    )
    return env_dir


def test_wheel_ships_the_configs_and_runs_the_cpu_smoke_preset(tmp_path):
    require_benchmarker()
    wheel = build_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {n.split("pml_soproxy/benchmarker_configs/", 1)[1] for n in names
               if n.startswith("pml_soproxy/benchmarker_configs/")}  # fmt: skip
    expected = {
        str(p.relative_to(ROOT / "benchmarker_configs"))
        for p in (ROOT / "benchmarker_configs").rglob("*")
        if p.suffix in (".yaml", ".md")
    }
    assert shipped == expected

    env_dir = fresh_env(tmp_path, wheel)
    work = tmp_path / "elsewhere"
    make_cub(work / "data", class_ids=range(1, 9), per_class=4)
    environment = {k: v for k, v in os.environ.items()
                   if not k.startswith(("PYTHON", "PML_SOPROXY"))}  # fmt: skip
    where = run(str(env_dir / "bin" / "python"), "-c",
                "import pml_soproxy.benchmarker as b; print(b.CONFIG_DIR)",
                cwd=work, env=environment)  # fmt: skip
    assert Path(where.stdout.strip()).is_relative_to(env_dir)
    run(str(env_dir / "bin" / "pml-soproxy"), "benchmark", "--preset", "cpu_smoke",
        "--preset", "cub200", "--dataset_root", "data", "--root_experiment_folder",
        "experiments", "--experiment_name", "smoke", cwd=work, env=environment)  # fmt: skip
    meta = work / "experiments" / "smoke" / "meta_logs" / "saved_csvs" / "logs.db"
    assert meta.is_file()
