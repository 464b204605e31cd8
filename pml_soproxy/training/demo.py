"""The demo: Proxy Anchor with and without SO, same seed, side by side."""

import inspect
import os
from typing import Any, Dict, Mapping, Sequence

from ..losses import SoftOrthogonalProxyAnchorLoss
from ..report import describe_pretrained, side_by_side
from .checkpoints import atomic_write_json
from .config import resolve_config
from .run import train

DEMO_RESULTS = "demo.json"
DEMO_IMAGES = "test_images"
VARIANTS = ("proxy_anchor", "proxy_anchor+SO")
#: the SO variant's weight unless --so-weight says otherwise: the loss class's default
DEMO_SO_WEIGHT = (
    inspect.signature(SoftOrthogonalProxyAnchorLoss).parameters["so_weight"].default
)


def run_demo(
    dataset: str,
    overrides: Mapping[str, Any],
    extra_configs: Sequence[str],
    output_dir: str,
    so_weight: float,
    resume: bool = False,
    overwrite: bool = False,
    flag_source=None,
    echo=print,
) -> Dict[str, Dict[str, Any]]:
    """Train both variants into ``output_dir/<variant>``; print the comparison."""
    from ..figures import write_run_figures

    runs = {}
    for name, weight in zip(VARIANTS, (0.0, so_weight)):
        values = dict(
            overrides,
            so_weight=weight,
            output_dir=os.path.join(output_dir, name.replace("+", "_")),
        )
        kwargs = {"flag_source": flag_source} if flag_source else {}
        config = resolve_config(dataset, values, extra_configs, **kwargs).config
        echo(
            f"== {name}: {config.dataset}, so_weight={weight}, {config.epochs} epochs, "
            f"{config.model_name}, seed {config.seed}"
        )
        runs[name] = train(config, resume=resume, overwrite=overwrite)
    echo("\nTest split, weights selected on the validation classes:")
    echo(side_by_side({n: r["test"] for n, r in runs.items()}))
    for name, results in runs.items():
        init, final = results["proxy_cosines_init"], results["proxy_cosines_final"]
        echo(
            f"{name}: proxy mean|cos| {init['mean_abs_cos']:.3f} -> "
            f"{final['mean_abs_cos']:.3f}, max|cos| {init['max_abs_cos']:.3f} -> "
            f"{final['max_abs_cos']:.3f}, selected {results['selected']}, trunk "
            f"{describe_pretrained(results['pretrained_weights'])}"
        )
    for path in write_run_figures(runs, output_dir):
        echo(f"figure: {path}")
    for name, results in runs.items():
        for path in results.get("figures", []):
            echo(f"figure ({name}): {path}")
    if dataset == "digits":
        folder = write_image_folder(config, os.path.join(output_dir, DEMO_IMAGES))
        echo(f"test images as files, to try embed/index/search on: {folder}")
    atomic_write_json(
        os.path.join(output_dir, DEMO_RESULTS),
        {n: {"test": r["test"], "selected": r["selected"]} for n, r in runs.items()},
    )
    return runs


def write_image_folder(config, folder: str) -> str:
    """The test split as ``folder/<class>/<index>.png`` (an image folder like a
    user's own), written once."""
    from .builder import create_dataset

    if os.path.isdir(folder):
        return folder
    test = create_dataset(config, "test")
    tmp = folder + ".tmp"
    for i in range(len(test)):
        sub = os.path.join(tmp, test.class_names[test.labels[i]])
        os.makedirs(sub, exist_ok=True)
        test.load_image(i).save(os.path.join(sub, f"{i:04d}.png"))
    os.replace(tmp, folder)
    return folder
