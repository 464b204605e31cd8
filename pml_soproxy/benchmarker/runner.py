"""Launcher: powerful-benchmarker's example ``run.py`` plus this project's parts.

``python -m pml_soproxy.benchmarker [launcher flags] [powerful-benchmarker flags]``

1. installs the compatibility shims (:mod:`.compat`);
2. builds PB's ``SingleExperimentRunner`` with a config *search path*: each
   ``--config_<kind> [a, b]`` name is looked up in ``--extra_config_folder``\\ s,
   then in this repository's ``benchmarker_configs/``, then in PB's own
   configs (``--root_config_folder``, default: the installed package's), so our
   YAML files layer over PB's ``default.yaml`` files without copying them;
3. registers our trunk, datasets, split manager, loss, regulariser and
   Recall@K calculator (:func:`.components.register_all`);
4. ``--preset NAME`` (repeatable) builds ``--config_<kind>`` lists from
   ``benchmarker_configs/presets/NAME.yaml``: a dataset preset (``cub200``,
   ``cars196``, ``sop``, ``inshop``) first, then overlays (``baseline``,
   ``cpu_smoke``) whose names are appended; a ``--config_<kind>`` list given on
   the command line replaces the presets' list for that kind;
5. runs PB with every other flag passed through unchanged (``--experiment_name``,
   ``--resume_training``, ``--evaluate``, ``--evaluate_ensemble``,
   ``--splits_to_eval``, ``--reproduce_results``, config overrides, ...).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import yaml

__all__ = [
    "CONFIG_DIR",
    "PRESETS",
    "main",
    "build_runner",
    "expand_preset",
    "launcher_parser",
]

#: Where this project's YAML files live (the repository's ``benchmarker_configs``);
#: ``PML_SOPROXY_BENCHMARKER_CONFIGS`` overrides it.
CONFIG_DIR = Path(
    os.environ.get(
        "PML_SOPROXY_BENCHMARKER_CONFIGS",
        Path(__file__).resolve().parents[2] / "benchmarker_configs",
    )
)
DATASET_PRESETS = ("cub200", "cars196", "sop", "inshop")
OVERLAY_PRESETS = ("baseline", "cpu_smoke")
PRESETS = DATASET_PRESETS + OVERLAY_PRESETS
PROG = "python -m pml_soproxy.benchmarker"


def launcher_parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        allow_abbrev=False,
        description=(
            "Run powerful-benchmarker 0.9.33 with this project's loss, DeiT trunk, "
            "datasets and Recall@K. Flags not listed here (--experiment_name, "
            "--resume_training, --evaluate, --evaluate_ensemble, --splits_to_eval, "
            "--config_<kind> [a, b], config overrides ...) go to powerful-benchmarker "
            "unchanged."
        ),
    )
    add = parser.add_argument
    # powerful-benchmarker's examples/run.py flags, same names and defaults
    add("--pytorch_home", default=None)
    add("--dataset_root", default="datasets")
    add("--root_experiment_folder", default="experiments")
    add("--global_db_path", default=None)
    add("--merge_argparse_when_resuming", default=False, action="store_true")
    add(
        "--root_config_folder",
        default=None,
        help="PB's configs (default: the installed package's)",
    )
    add("--bayes_opt_iters", type=int, default=0, help="not supported (see README)")
    add("--reproductions", default="0")
    # ours
    add(
        "--preset",
        action="append",
        default=[],
        choices=PRESETS,
        help="--config_<kind> lists from benchmarker_configs/presets/<name>.yaml: a "
        "dataset (cub200, cars196, sop, inshop), then overlays (baseline: plain Proxy "
        "Anchor; cpu_smoke: tiny CPU run); repeatable",
    )
    add(
        "--extra_config_folder",
        action="append",
        default=[],
        help="more YAML folders (config_<kind>/<name>.yaml), searched first; repeatable",
    )
    return parser


def load_preset(name: str) -> Dict[str, List[str]]:
    path = CONFIG_DIR / "presets" / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"preset {name!r}: {path} not found (set PML_SOPROXY_BENCHMARKER_CONFIGS "
            "to the repository's benchmarker_configs folder)"
        )
    with open(path) as f:
        preset = yaml.safe_load(f)
    return {k: list(v) for k, v in preset.items()}


def expand_preset(presets: Sequence[str], pb_argv: Sequence[str]) -> List[str]:
    """``pb_argv`` plus ``--config_<kind> [a, b]`` for each kind the presets list and
    the command line does not (each preset's names appended to the previous ones)."""
    argv = list(pb_argv)
    if isinstance(presets, str):
        presets = [presets]
    given = {a[2:] for a in argv if a.startswith("--config_")}
    lists: Dict[str, List[str]] = {}
    for preset in presets or ():
        for kind, names in load_preset(preset).items():
            lists.setdefault(kind, [])
            lists[kind] += [n for n in names if n not in lists[kind]]
    for kind, names in lists.items():
        if kind not in given:
            argv += [f"--{kind}", "[" + ", ".join(names) + "]"]
    return argv


def _runner_class():
    from powerful_benchmarker.runners.single_experiment_runner import (
        SingleExperimentRunner,
    )

    class SoProxyRunner(SingleExperimentRunner):
        """PB's runner with a config search path (see the module docstring)."""

        def __init__(self, config_folders: Sequence[str] = (), **kwargs):
            super().__init__(**kwargs)
            self.config_folders = [str(f) for f in config_folders] + [
                self.root_config_folder
            ]

        def find_config(self, relative: str) -> Optional[str]:
            for folder in self.config_folders:
                path = os.path.join(folder, relative)
                if os.path.isfile(path):
                    return path
            return None

        def get_root_config_paths(self, args):
            config_paths = defaultdict(list)
            for kind in self.get_list_of_yaml_names_to_load(args):
                flat = self.find_config(f"{kind}.yaml")
                if flat is not None:
                    config_paths[kind].append(flat)
                    continue
                for name in getattr(args, kind):
                    path = self.find_config(os.path.join(kind, f"{name}.yaml"))
                    if path is None:
                        raise FileNotFoundError(
                            f"--{kind}: no {kind}/{name}.yaml in any of "
                            + ", ".join(self.config_folders)
                        )
                    config_paths[kind].append(path)
            return config_paths

    return SoProxyRunner


def build_runner(launcher_args: argparse.Namespace):
    """A registered runner (shims installed) for parsed launcher flags."""
    try:
        from . import compat
        from .components import register_all

        compat.install()
    except ImportError as err:
        raise RuntimeError(
            f"powerful-benchmarker or one of its dependencies is missing ({err}); "
            "install them with: pip install -r requirements/benchmarker.txt && "
            "pip install --no-deps powerful-benchmarker==0.9.33"
        ) from err
    folders = list(launcher_args.extra_config_folder)
    if CONFIG_DIR.is_dir():
        folders.append(str(CONFIG_DIR))
    runner = _runner_class()(
        config_folders=folders,
        dataset_root=launcher_args.dataset_root,
        root_experiment_folder=launcher_args.root_experiment_folder,
        pytorch_home=launcher_args.pytorch_home,
        root_config_folder=launcher_args.root_config_folder,
        global_db_path=launcher_args.global_db_path,
        merge_argparse_when_resuming=launcher_args.merge_argparse_when_resuming,
    )
    register_all(runner)
    return runner


@contextlib.contextmanager
def _argv(argv: List[str]):
    saved = sys.argv
    sys.argv = argv
    try:
        yield
    finally:
        sys.argv = saved


def main(argv: Optional[Sequence[str]] = None, prog: str = PROG):
    """Parse the launcher flags, run PB with the rest; returns PB's result
    (``(mean, standard error)`` of the primary metric after training)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = launcher_parser(prog)
    launcher_args, pb_argv = parser.parse_known_args(argv)
    presets = launcher_args.preset
    if presets and (
        presets[0] not in DATASET_PRESETS
        or any(p in DATASET_PRESETS for p in presets[1:])
    ):
        parser.error(
            "--preset: one dataset preset (%s) first, then overlays (%s)"
            % (", ".join(DATASET_PRESETS), ", ".join(OVERLAY_PRESETS))
        )
    if launcher_args.bayes_opt_iters > 0:
        raise SystemExit(
            f"{prog}: --bayes_opt_iters is not supported: powerful-benchmarker 0.9.33's "
            "BayesOptRunner imports ax.modelbridge.registry, which current ax-platform "
            "releases (1.3.1) no longer have; run single experiments per setting."
        )
    logging.getLogger().setLevel(logging.INFO)
    pb_argv = expand_preset(launcher_args.preset, pb_argv)
    runner = build_runner(launcher_args)
    # PB's YamlReader parses sys.argv itself.
    with _argv([prog] + pb_argv):
        return runner.run()
