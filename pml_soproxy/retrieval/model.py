"""A trained embedding model, loaded for use: from a run (folder, weights or
checkpoint) or from an exported ``model.safetensors``, never by unpickling.

:class:`EmbeddingNet` is what every door of retrieval runs: trunk -> embedder ->
L2 normalisation, float32 out. The same module is exported to ONNX / TorchScript.
"""

import json
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional

import torch

EXPORT_FORMAT = "pml-soproxy-export"
EXPORTED_WEIGHTS = "model.safetensors"


class EmbeddingNet(torch.nn.Module):
    """images -> L2-normalised float32 embeddings (trunk, then embedder)."""

    def __init__(self, trunk: torch.nn.Module, embedder: torch.nn.Module):
        super().__init__()
        self.trunk = trunk
        self.embedder = embedder

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.embedder(self.trunk(images).float())
        return torch.nn.functional.normalize(features.float(), p=2, dim=1)


@dataclass
class LoadedModel:
    """What embedding needs: the modules (on ``device``, eval mode), the eval
    transform of the run, and a description that travels into manifests."""

    trunk: torch.nn.Module  # under the precision's autocast, float32 out
    embedder: torch.nn.Module
    transform: Callable
    device: torch.device
    info: Dict[str, Any] = field(default_factory=dict)
    net: Optional[EmbeddingNet] = None  # plain float32 trunk + embedder (export)

    @property
    def embedding_size(self) -> int:
        return int(self.info["embedding_size"])

    def inference_model(self):
        """PML's InferenceModel over these modules (it L2-normalises)."""
        from pytorch_metric_learning.utils.inference import InferenceModel

        return InferenceModel(
            self.trunk,
            embedder=self.embedder,
            normalize_embeddings=True,
            data_device=self.device,
            knn_func=_search_elsewhere,  # its default FaissKNN needs faiss to exist
        )


def _search_elsewhere(*args, **kwargs):
    raise NotImplementedError("search through pml_soproxy.retrieval.Index")


def _exported_file(path: str) -> Optional[str]:
    """``path`` itself or ``path/model.safetensors`` when it is an export."""
    candidate = os.path.join(path, EXPORTED_WEIGHTS) if os.path.isdir(path) else path
    if not (candidate.endswith(".safetensors") and os.path.isfile(candidate)):
        return None
    from safetensors import safe_open

    try:
        with safe_open(candidate, framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
    except Exception:  # unreadable: the run-file reader says why
        return None
    return candidate if metadata.get("format") == EXPORT_FORMAT else None


def load_model(
    source: str, device: str = "auto", precision: str = "auto"
) -> LoadedModel:
    """A run folder, its ``weights_best.safetensors`` / ``checkpoint_latest.pt``,
    or an export folder / its ``model.safetensors``, ready to embed."""
    from ..device import resolve_device

    if not os.path.exists(source):
        raise FileNotFoundError(
            f"no run folder or model file at {source}: pass a folder written by "
            "`pml-soproxy train` (or its weights_best.safetensors), or an export "
            "folder of `pml-soproxy export`"
        )
    torch_device = resolve_device(device)
    exported = _exported_file(source)
    card = os.path.join(source, "model_card.json")
    if exported is None and os.path.isfile(card):
        raise FileNotFoundError(
            f"{source} is an export without {EXPORTED_WEIGHTS}: pml-soproxy reads "
            "that format (`pml-soproxy export RUN --format safetensors`); the ONNX "
            "and TorchScript files are for use outside pml-soproxy"
        )
    if exported is not None:
        loaded = _load_exported(exported, torch_device, precision)
    else:
        loaded = _load_run(source, torch_device, precision)
    loaded.trunk.eval()
    loaded.embedder.eval()
    return loaded


def _load_run(source: str, device: torch.device, precision: str) -> LoadedModel:
    from ..device import AutocastTrunk, autocast_dtype
    from ..training import builder, checkpoints
    from ..training.config import config_from_dict

    saved = checkpoints.load_run_file(source)
    meta = saved["meta"]
    values = dict(meta["config"], precision=precision)
    config = config_from_dict(values, f"the config saved in {saved['path']}")
    model = builder.build_model(config, {"kind": "random init", "path": None}, device)
    builder.load_state(model.trunk, saved["trunk"], saved["path"], "trunk")
    builder.load_state(model.embedder, saved["embedder"], saved["path"], "embedder")
    amp = autocast_dtype(device, precision)
    info = {
        "source": os.path.abspath(source),
        "weights": os.path.abspath(saved["path"]),
        "sha256": checkpoints.sha256_of(saved["path"]),
        "model_name": config.model_name,
        "embedding_size": model.embedding_size,
        "epoch": meta.get("epoch"),
        "dataset": config.dataset,
        "data_config": dict(model.trunk.data_config),
        "config": config.to_dict(),
        "pretrained": meta.get("pretrained"),
        "pml_soproxy": meta.get("pml_soproxy"),
    }
    return LoadedModel(
        AutocastTrunk(model.trunk, device.type, amp),
        model.embedder,
        model.eval_transform,
        device,
        info,
        EmbeddingNet(model.trunk, model.embedder),
    )


def _load_exported(path: str, device: torch.device, precision: str) -> LoadedModel:
    """An exported timm model whose classifier head is the embedder."""
    import timm
    import timm.data
    from safetensors import safe_open
    from safetensors.torch import load_file

    from ..device import AutocastTrunk, autocast_dtype
    from ..training.builder import load_state

    with safe_open(path, framework="pt", device="cpu") as f:
        try:
            card = json.loads(f.metadata()["model_card"])
        except (KeyError, ValueError):
            raise ValueError(f"{path}: its model card metadata is not JSON") from None
    model = timm.create_model(
        card["model_name"],
        pretrained=False,
        num_classes=card["num_classes"],
        **card.get("trunk_kwargs", {}),
    )
    load_state(model, load_file(path), path, "exported model")
    model.to(device)
    amp = autocast_dtype(device, precision)
    info = {
        "source": os.path.abspath(os.path.dirname(path)),
        # identity = the run's weights: an export embeds as they do (checked when
        # exporting), so its vectors and the run's may share an index
        "weights": card["weights"]["file"],
        "sha256": card["weights"]["sha256"],
        "export": os.path.abspath(path),
        "model_name": card["model_name"],
        "embedding_size": card["embedding_size"],
        "epoch": card.get("epoch"),
        "dataset": card.get("dataset"),
        "data_config": card["data_config"],
        "config": card.get("config"),
        "pretrained": card.get("pretrained"),
        "pml_soproxy": card.get("pml_soproxy"),
    }
    transform = timm.data.create_transform(**card["data_config"], is_training=False)
    identity = torch.nn.Identity()
    return LoadedModel(
        AutocastTrunk(model, device.type, amp),
        identity,
        transform,
        device,
        info,
        EmbeddingNet(model, identity),
    )
