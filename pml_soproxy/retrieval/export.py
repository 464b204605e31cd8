"""Export a trained model for use without pml-soproxy: images -> L2-normalised
embeddings, as timm-loadable safetensors, ONNX or TorchScript, with a model card.

* ``model.safetensors``: the trunk's timm state dict with the embedder as its
  classifier head, so ``timm.create_model(name, num_classes=D)`` loads it strictly
  (L2-normalise its output). pml-soproxy reads it back too (``embed``, ``Retriever``).
* ``model.onnx``: checked against torch under onnxruntime when it is installed.
* ``model.torchscript.pt``: ``torch.jit.trace`` of the same module.
* ``model_card.json`` / ``MODEL_CARD.md``: model, data, split, metrics, starting
  weights, preprocessing.
"""

import json
import os
import time
import warnings
from typing import Any, Dict, List, Optional

import torch

from .model import EXPORT_FORMAT, EXPORTED_WEIGHTS, EmbeddingNet, load_model

FORMATS = {"safetensors": EXPORTED_WEIGHTS, "onnx": "model.onnx",
           "torchscript": "model.torchscript.pt"}  # fmt: skip
ONNX_TOLERANCE = 1e-4


def export_model(
    source: str, fmt: str, out_dir: Optional[str] = None
) -> Dict[str, Any]:
    """Write ``out_dir/<model file>`` and the model card; the card as a dict."""
    from ..training.checkpoints import sha256_of

    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    loaded = load_model(source, device="cpu", precision="fp32")
    if "export" in loaded.info:
        raise ValueError(f"{source} is already an export; export its run folder")
    out_dir = out_dir or os.path.join(_run_folder(loaded.info), "export")
    os.makedirs(out_dir, exist_ok=True)
    net = loaded.net.eval()
    shape = tuple(loaded.info["data_config"]["input_size"])
    example = torch.rand(2, *shape)
    path = os.path.join(out_dir, FORMATS[fmt])
    card = model_card(loaded.info)
    check: Dict[str, Any] = {}
    if fmt == "safetensors":
        check = _export_timm(net, loaded.info, card, example, path)
    elif fmt == "onnx":
        check = _export_onnx(net, example, path)
    else:
        check = _export_torchscript(net, example, path)
    card["exports"] = _previous_exports(out_dir, card)
    card["exports"][fmt] = dict(file=os.path.basename(path), sha256=sha256_of(path),
                                check=check, date=time.strftime("%Y-%m-%d %H:%M"))  # fmt: skip
    _write_card(card, out_dir)
    return dict(card, path=path, check=check)


def _previous_exports(out_dir: str, card: Dict[str, Any]) -> Dict[str, Any]:
    """Other formats already exported to ``out_dir`` from the same weights."""
    try:
        with open(os.path.join(out_dir, "model_card.json"), encoding="utf-8") as f:
            old = json.load(f)
    except (OSError, ValueError):
        return {}
    same = old.get("weights", {}).get("sha256") == card["weights"]["sha256"]
    return dict(old.get("exports") or {}) if same else {}


def _run_folder(info: Dict[str, Any]) -> str:
    source = info["source"]
    return source if os.path.isdir(source) else os.path.dirname(source)


def _export_timm(net: EmbeddingNet, info, card, example, path) -> Dict[str, Any]:
    import timm
    from safetensors.torch import save_file

    from ..training.checkpoints import atomic_write

    timm_model = net.trunk.model
    state = {k: v.contiguous() for k, v in timm_model.state_dict().items()}
    if isinstance(net.embedder, torch.nn.Linear):
        heads = timm_model.pretrained_cfg.get("classifier", "head")
        for head in (heads,) if isinstance(heads, str) else heads:
            state[f"{head}.weight"] = net.embedder.weight.detach().clone()
            state[f"{head}.bias"] = net.embedder.bias.detach().clone()
    metadata = {"format": EXPORT_FORMAT, "model_card": json.dumps(card)}
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata=metadata))
    # it must load strictly into plain timm and compute the same embeddings
    rebuilt = timm.create_model(card["model_name"], pretrained=False,
                                num_classes=card["num_classes"],
                                **card["trunk_kwargs"]).eval()  # fmt: skip
    from safetensors.torch import load_file

    try:
        rebuilt.load_state_dict(load_file(path))
    except RuntimeError as err:
        os.remove(path)
        raise ValueError(
            f"{card['model_name']} cannot be exported as a timm model with the "
            f"embedder as its head ({str(err).splitlines()[0]}); export --format onnx"
        ) from None
    return _compare(net, lambda x: torch.nn.functional.normalize(rebuilt(x), dim=1),
                    example, "timm", path)  # fmt: skip


def _export_onnx(net: EmbeddingNet, example, path) -> Dict[str, Any]:
    from ..training.checkpoints import atomic_write

    def write(tmp):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                net, (example,), dynamo=True, verbose=False,
                input_names=["images"], output_names=["embeddings"],
                dynamic_shapes={"images": {0: torch.export.Dim("batch")}},
            )  # fmt: skip
        program.save(tmp)

    try:
        import onnxscript  # noqa: F401  (torch's ONNX exporter needs it)
    except ImportError:
        raise RuntimeError(
            "ONNX export needs the packages onnx and onnxscript: pip install "
            "'pml-soproxy[export]'"
        ) from None
    atomic_write(path, write)
    try:
        import onnxruntime
    except ImportError:
        return {"checked": False, "why": "onnxruntime is not installed"}
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])

    def run(x):
        return torch.from_numpy(session.run(None, {"images": x.numpy()})[0])

    return _compare(net, run, example, "onnxruntime", path)


def _export_torchscript(net: EmbeddingNet, example, path) -> Dict[str, Any]:
    from ..training.checkpoints import atomic_write

    with warnings.catch_warnings():  # torch deprecates jit; users still ask for it
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(net, example)
        atomic_write(path, lambda tmp: torch.jit.save(traced, tmp))
    return _compare(net, traced, example, "torchscript", path)


def _compare(net, other, example, name: str, path: str) -> Dict[str, Any]:
    """The exported model's output against torch's, on another batch size."""
    x = torch.rand(3, *example.shape[1:], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = float((net(x) - other(x)).abs().max())
    if not diff <= ONNX_TOLERANCE:
        os.remove(path)
        raise RuntimeError(
            f"the {name} export differs from the torch model by {diff:.2e} (> "
            f"{ONNX_TOLERANCE:g}); nothing was written"
        )
    return {"checked": True, "against": name, "max_abs_diff": diff}


def model_card(info: Dict[str, Any]) -> Dict[str, Any]:
    config = info["config"]
    results = _read_results(_run_folder(info))
    size = info["embedding_size"]
    return {
        "model_name": info["model_name"],
        "trunk_kwargs": config.get("trunk_kwargs") or {},
        "num_classes": size if config.get("embedding_size") else 0,
        "embedding_size": size,
        "output": f"{size}-d L2-normalised embeddings (compare by inner product)",
        "data_config": info["data_config"],
        "dataset": config["dataset"],
        "data_root": config.get("data_root"),
        "split": {"val_fraction": config.get("val_fraction"),
                  "seed": config.get("seed"),
                  "selection": config.get("selection_metric")},  # fmt: skip
        "epoch": info.get("epoch"),
        "loss": {k: config.get(k) for k in ("loss", "so_weight", "margin", "alpha")
                 if k in config},  # fmt: skip
        "metrics": (results or {}).get("test"),
        "selected": (results or {}).get("selected"),
        "pretrained": info.get("pretrained"),
        "weights": {"file": info["weights"], "sha256": info["sha256"]},
        "config": config,
        "pml_soproxy": info.get("pml_soproxy"),
    }


def _read_results(folder: str) -> Optional[Dict[str, Any]]:
    from ..training.checkpoints import RESULTS

    try:
        with open(os.path.join(folder, RESULTS), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _write_card(card: Dict[str, Any], out_dir: str):
    from ..training.checkpoints import atomic_write, atomic_write_json

    atomic_write_json(os.path.join(out_dir, "model_card.json"), card)
    text = "\n".join(card_lines(card)) + "\n"

    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    atomic_write(os.path.join(out_dir, "MODEL_CARD.md"), write)


def card_lines(card: Dict[str, Any]) -> List[str]:
    pre = card.get("pretrained") or {}
    d = card["data_config"]
    lines = [
        f"# {card['model_name']} embedding model (pml-soproxy {card['pml_soproxy']})",
        "",
        f"- **Output**: {card['output']}.",
        f"- **Input**: RGB, {d['input_size']}, mean {d['mean']}, std {d['std']}, "
        f"interpolation {d['interpolation']}, crop_pct {d.get('crop_pct')}.",
        f"- **Trained on**: {card['dataset']}"
        + (f" ({card['data_root']})" if card["data_root"] else "")
        + ", training "
        f"classes minus a class-disjoint validation split (val_fraction "
        f"{card['split']['val_fraction']}, seed {card['split']['seed']}).",
        f"- **Selected**: {card.get('selected') or 'epoch ' + str(card['epoch'])}.",
        f"- **Loss**: {card['loss']}.",
        f"- **Starting weights**: {pre.get('kind')} {pre.get('path') or ''}".rstrip()
        + ".",
        f"- **Weights**: {card['weights']['file']} (sha256 "
        f"{card['weights']['sha256'][:16]}).",
    ]
    for fmt, export in (card.get("exports") or {}).items():
        check = export["check"]
        how = (f"max |difference| {check['max_abs_diff']:.1e} against the torch model "
               f"({check['against']})" if check.get("checked") else check.get("why"))  # fmt: skip
        lines.append(f"- **{fmt}**: {export['file']} (sha256 {export['sha256'][:16]}); "
                     f"{how}.")  # fmt: skip
    metrics = card.get("metrics")
    lines += ["", "## Test metrics (once, with the selected weights)", ""]
    if metrics:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" for k, v in metrics.items()]
    else:
        lines.append("Not evaluated (no results.json beside the weights).")
    return lines
