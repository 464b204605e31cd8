"""Re-run the test evaluation of a saved run, rebuilt by the same builder."""

import os
from typing import Any, Dict, Optional

from ..device import resolve_device
from . import builder, checkpoints
from .config import config_from_dict


def evaluate_run(
    path: str, data_root: Optional[str] = None, device: str = "auto"
) -> Dict[str, Any]:
    """Test metrics of a run folder (its validation-selected weights), its
    ``weights_best.safetensors`` or its ``checkpoint_latest.pt``. Nothing is
    written: see :func:`write_evaluation`."""
    saved = checkpoints.load_run_file(path)
    meta = saved["meta"]
    values = dict(meta["config"])
    if data_root is not None:
        values["data_root"] = data_root
    config = config_from_dict(values, f"the config saved in {saved['path']}")
    torch_device = resolve_device(device)
    model = builder.build_model(
        config, {"kind": "random init", "path": None}, torch_device
    )
    builder.load_state(model.trunk, saved["trunk"], saved["path"], "trunk")
    builder.load_state(model.embedder, saved["embedder"], saved["path"], "embedder")
    test = builder.evaluate_test(config, model, torch_device)
    return {
        "dataset": config.dataset,
        "model_name": config.model_name,
        "pretrained_weights": meta.get("pretrained"),
        "selected": f"{os.path.basename(saved['path'])} (epoch {meta['epoch']})",
        "test": test,
        "checkpoint": os.path.abspath(saved["path"]),
    }


def default_evaluation_path(path: str) -> str:
    folder = path if os.path.isdir(path) else os.path.dirname(path) or "."
    return os.path.join(folder, checkpoints.EVALUATION)


def write_evaluation(results: Dict[str, Any], path: str):
    checkpoints.atomic_write_json(path, results)
