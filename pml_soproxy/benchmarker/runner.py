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
   replaces the presets' list for that kind (:func:`layered_presets`);
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
from typing import Any, Dict, List, Optional, Sequence

import yaml

__all__ = [
    "CONFIG_DIR",
    "PRESETS",
    "main",
    "build_runner",
    "expand_preset",
    "launcher_parser",
]


def _config_dir() -> Path:
    """This project's YAML files: ``pml_soproxy/benchmarker_configs``, a link to the
    repository's top-level ``benchmarker_configs/`` in a checkout and a copy of it
    in an installed wheel; else (a checkout made without symlinks) the top-level
    folder itself."""
    package = Path(__file__).resolve().parents[1]
    name = "benchmarker_configs"
    for folder in (package / name, package.parent / name):
        if (folder / "presets").is_dir():
            return folder
    return package / name


#: Where this project's YAML files live (see :func:`_config_dir`).
CONFIG_DIR = _config_dir()
#: ``--preset`` names: the files of ``presets/``
PRESETS = tuple(sorted(p.stem for p in (CONFIG_DIR / "presets").glob("*.yaml")))
#: a preset's ``layer``, in the order the layers are applied
LAYERS = ("dataset", "loss", "search", "size")
#: the loss layer when a dataset preset is given without one
DEFAULT_LOSS_PRESET = "so_proxy_anchor"
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
    # ours
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
    return parser


def load_preset(name: str) -> Dict[str, Any]:
    """``presets/<name>.yaml``: its ``layer`` (one of :data:`LAYERS`), its
    ``config_<kind>`` lists and, for a loss preset, the ``search`` lists that
    ``--preset search`` adds."""
    path = CONFIG_DIR / "presets" / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"preset {name!r}: {path} not found; the presets are "
            f"{', '.join(PRESETS) or 'missing (reinstall pml-soproxy)'}"
        )
    with open(path) as f:
        preset = yaml.safe_load(f) or {}

    def lists(mapping, where):
        if not isinstance(mapping, dict) or not all(
            k.startswith("config_") and isinstance(v, list) for k, v in mapping.items()
        ):
            raise ValueError(
                f"{path}: {where} must map config_<kind> names to lists of YAML names"
            )
        return {k: [str(n) for n in v] for k, v in mapping.items()}

    layer = preset.pop("layer", None)
    if layer not in LAYERS:
        raise ValueError(f"{path}: 'layer' must be one of {', '.join(LAYERS)}")
    search = lists(preset.pop("search", {}), "'search'")
    return {"name": name, "layer": layer, "lists": lists(preset, "the file"),
            "search": search}  # fmt: skip


def layered_presets(presets: Sequence[str]) -> List[Dict[str, List[str]]]:
    """The ``config_<kind>`` lists of ``presets`` in layer order, whatever their
    order on the command line: the dataset preset (exactly one), the loss preset
    (at most one; :data:`DEFAULT_LOSS_PRESET` if none), the loss preset's
    ``search`` lists if ``search`` is given, then ``cpu_smoke``. Two presets of one
    layer are refused: each would undo the other."""
    if not presets:
        return []
    by_layer: Dict[str, List[Dict[str, Any]]] = defaultdict(list)
    for name in dict.fromkeys(presets):  # a repeated name counts once
        preset = load_preset(name)
        by_layer[preset["layer"]].append(preset)
    datasets = [p["name"] for p in by_layer["dataset"]]
    if len(datasets) != 1:
        raise ValueError(
            "--preset: give exactly one dataset preset (%s), got %s"
            % (", ".join(_layer_names("dataset")), " and ".join(datasets) or "none")
        )
    for layer in LAYERS:
        names = [p["name"] for p in by_layer[layer]]
        if len(names) > 1:
            raise ValueError(
                f"--preset {' and --preset '.join(names)} are both {layer} presets, "
                "so the later would undo the earlier; give one of them"
            )
    if not by_layer["loss"]:
        by_layer["loss"] = [load_preset(DEFAULT_LOSS_PRESET)]
    (loss,) = by_layer["loss"]
    if by_layer["search"] and not loss["search"]:
        raise ValueError(
            f"--preset search: the loss preset {loss['name']} lists no search space "
            f"('search' in {CONFIG_DIR / 'presets' / loss['name']}.yaml)"
        )
    layered = []
    for layer in LAYERS:
        for preset in by_layer[layer]:
            layered.append(loss["search"] if layer == "search" else preset["lists"])
    return layered


def _layer_names(layer: str) -> List[str]:
    names = []
    for name in PRESETS:
        try:
            if load_preset(name)["layer"] == layer:
                names.append(name)
        except (OSError, ValueError):
            pass
    return names


def expand_preset(presets: Sequence[str], pb_argv: Sequence[str]) -> List[str]:
    """``pb_argv`` plus ``--config_<kind> [a, b]`` for each kind the presets list and
    the command line does not: each layer's names appended to the previous layers'
    (:func:`layered_presets`)."""
    argv = list(pb_argv)
    if isinstance(presets, str):
        presets = [presets]
    given = {a[2:] for a in argv if a.startswith("--config_")}
    lists: Dict[str, List[str]] = {}
    for layer in layered_presets(presets or ()):
        for kind, names in layer.items():
            lists.setdefault(kind, [])
            lists[kind] += [n for n in names if n not in lists[kind]]
    for kind, names in lists.items():
        if kind not in given:
            argv += [f"--{kind}", "[" + ", ".join(names) + "]"]
    return argv


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
