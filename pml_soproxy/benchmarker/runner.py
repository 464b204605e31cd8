"""Launcher: powerful-benchmarker's example ``run.py`` plus this project's parts.

``python -m pml_soproxy.benchmarker [launcher flags] [powerful-benchmarker flags]``

1. installs the compatibility shims (:mod:`.compat`);
2. builds PB's ``SingleExperimentRunner`` with a config *search path*: each
   ``--config_<kind> [a, b]`` name is looked up in ``--extra_config_folder``\\ s,
   then in this project's ``benchmarker_configs/`` (shipped in the wheel), then in
   PB's own configs (``--root_config_folder``, default: the installed package's), so our
   YAML files layer over PB's ``default.yaml`` files without copying them;
3. registers our trunk, datasets, split manager, loss, regulariser and
   Recall@K calculator (:func:`.components.register_all`);
4. ``--preset NAME`` (repeatable) builds ``--config_<kind>`` lists from
   ``benchmarker_configs/presets/NAME.yaml``, each preset's names appended in the
   order of its ``layer`` whatever the command-line order: the dataset
   (``cub200``, ``cars196``, ``sop``, ``inshop``; exactly one), the loss (at most
   one; ``so_proxy_anchor`` by default), ``search`` (the loss preset's search
   space) and ``cpu_smoke``; a ``--config_<kind>`` list given on the command line
   replaces the presets' list for that kind (:mod:`.presets`);
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
from typing import List, Optional, Sequence

from .presets import (  # noqa: F401 (the launcher's names, as before)
    CONFIG_DIR,
    DEFAULT_LOSS_PRESET,
    LAYERS,
    PRESETS,
    expand_preset,
    layered_presets,
    load_preset,
)

__all__ = [
    "CONFIG_DIR",
    "PRESETS",
    "main",
    "build_runner",
    "expand_preset",
    "launcher_parser",
]

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
    _add_run_py_flags(parser.add_argument)
    _add_preset_flags(parser.add_argument)
    return parser


def _add_run_py_flags(add) -> None:
    """powerful-benchmarker's examples/run.py flags, same names and defaults."""
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
    add(
        "--bayes_opt_iters",
        type=int,
        default=0,
        help="Bayesian search over the configs' ~BAYESIAN~ ranges, N trials "
        "(pml_soproxy.benchmarker.bayes_opt, Optuna)",
    )
    add(
        "--reproductions",
        default="0",
        help="with --bayes_opt_iters: reproduce the best trial M times (or A,B)",
    )
    add(
        "--bayes_opt_init_trials",
        type=int,
        default=None,
        help="with --bayes_opt_iters: Sobol trials before the Gaussian process "
        "(default: max(5, 2 x parameters), as ax)",
    )


def _add_preset_flags(add) -> None:
    """Ours: the presets and the extra config folders."""
    add(
        "--preset",
        action="append",
        default=[],
        choices=PRESETS,
        metavar="NAME",
        help="--config_<kind> lists from benchmarker_configs/presets/<NAME>.yaml, "
        "layered in one order whatever the order given: one dataset (cub200, "
        "cars196, sop, inshop); at most one loss (so_proxy_anchor, the default; "
        "proxy_anchor alias baseline; [so_]proxy_nca, [so_]normalized_softmax, "
        "[so_]soft_triple, [so_]arcface, [so_]cosface); search (the loss's "
        "~BAYESIAN~ ranges, with --bayes_opt_iters); cpu_smoke (a tiny CPU run); "
        "repeatable",
    )
    add(
        "--extra_config_folder",
        action="append",
        default=[],
        help="more YAML folders (config_<kind>/<name>.yaml), searched first; repeatable",
    )


def check_pb_flags(pb_argv: Sequence[str]) -> None:
    """Refuse what powerful-benchmarker's YAML reader would silently ignore: a flag
    ending in ``:`` (``--trainer~APPLY~2: {batch_size: 64}`` sets a key named
    ``trainer~APPLY~2:``, which matches no config key)."""
    for token in pb_argv:
        if token.startswith("--") and token.endswith(":"):
            raise ValueError(
                f"{token} ends in a colon, which powerful-benchmarker keeps in the key "
                f"and then silently ignores; write the flag without it: "
                f"{token.rstrip(':')} {{...}}, e.g. --trainer~APPLY~2 {{batch_size: 64}}"
            )


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


def build_runner(launcher_args: argparse.Namespace, runner_class=None, **runner_kwargs):
    """A registered runner (shims installed) for parsed launcher flags; by default
    the single-experiment runner (``runner_class`` and ``runner_kwargs``: see
    :mod:`.bayes_opt`)."""
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
    runner = (runner_class or _runner_class())(
        **runner_kwargs,
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
    bayes = launcher_args.bayes_opt_iters > 0 or launcher_args.reproductions != "0"
    if "search" in launcher_args.preset and not bayes:
        parser.error(
            "--preset search adds ~BAYESIAN~ ranges, which only a search reads: add "
            "--bayes_opt_iters N, or drop --preset search"
        )
    try:
        check_pb_flags(pb_argv)
        pb_argv = expand_preset(launcher_args.preset, pb_argv)
    except ValueError as err:
        parser.error(str(err))
    logging.getLogger().setLevel(logging.INFO)
    search = launcher_args.bayes_opt_iters, launcher_args.reproductions
    if search != (0, "0") or launcher_args.bayes_opt_init_trials is not None:
        from . import bayes_opt  # search + reproductions: best (mean, SEM)

        return bayes_opt.run(parser, launcher_args, pb_argv)
    runner = build_runner(launcher_args)
    # PB's YamlReader parses sys.argv itself.
    with _argv([prog] + pb_argv):
        return runner.run()
