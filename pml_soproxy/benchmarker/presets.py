"""``--preset NAME``: this project's YAML folder (``benchmarker_configs/``), its
presets and how they layer into ``--config_<kind> [a, b]`` lists.

Each ``presets/NAME.yaml`` has a ``layer`` (:data:`LAYERS`) and ``config_<kind>``
lists; the presets given are applied in layer order whatever the command-line
order (the dataset, exactly one; the loss, at most one, :data:`DEFAULT_LOSS_PRESET`
by default; ``search``, the loss preset's search space; ``cpu_smoke``), and a
``--config_<kind>`` list given on the command line replaces the presets' list for
that kind (:func:`expand_preset`).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Sequence

import yaml

__all__ = [
    "CONFIG_DIR",
    "DEFAULT_LOSS_PRESET",
    "LAYERS",
    "PRESETS",
    "expand_preset",
    "layered_presets",
    "load_preset",
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
