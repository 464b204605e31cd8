"""A run's saved state, loaded without ever unpickling arbitrary objects.

Two files per run folder:

* ``weights_best.safetensors``: the validation-selected trunk, embedder and proxies
  (keys ``trunk.*``, ``embedder.*``, ``loss.*``), with the run's config and epoch as
  JSON in the safetensors metadata. This is the file to share or evaluate.
* ``checkpoint_latest.pt``: everything ``--resume`` needs to continue bit for bit:
  weights, optimizers, lr schedulers, grad scaler, every RNG of every process and the
  sampler order. It holds only tensors, numbers, strings, lists and dicts (the run's
  metadata as one JSON string), so it is read with ``torch.load(weights_only=True)``,
  which refuses any other pickled object.

Both are written to a temporary file in the same folder, flushed to disk and renamed
(``os.replace``): a crash or ``SIGKILL`` while saving leaves the previous file intact,
and the stale temporary file is removed by the next run in that folder.

:func:`sha256_of` is the one file digest that results, index manifests and model
cards record.
"""

import glob
import hashlib
import json
import os
import pickle
import random
import zipfile
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch

FORMAT = "pml-soproxy-run"
FORMAT_VERSION = 2
CHECKPOINT = "checkpoint_latest.pt"
BEST_WEIGHTS = "weights_best.safetensors"
RESULTS = "results.json"
EVALUATION = "evaluation.json"
SKIPPED_IMAGES = "skipped_images.tsv"
#: files of pml-soproxy < 0.2 (pickles): refused with a sentence, never loaded
OLD_FILES = ("checkpoint_latest.pth", "weights_best.pth")
TMP_MARK = ".tmp-"
PARTS = ("trunk", "embedder", "loss")


class CheckpointError(ValueError):
    """A file that is not a loadable pml-soproxy run state."""


#################
### writing ###
#################


def atomic_write(path: str, write: Callable[[str], None]):
    """``write(tmp)``, fsync, then rename over ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f"{os.path.basename(path)}{TMP_MARK}{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_json(path: str, obj: Any):
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1)

    atomic_write(path, write)


def sha256_of(path: str) -> str:
    """The file's SHA-256, read in 1 MiB blocks (what results and manifests record)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def remove_stale_temporaries(folder: str) -> List[str]:
    """Temporary files left by a run killed while saving."""
    stale = glob.glob(os.path.join(glob.escape(folder), f"*{TMP_MARK}*"))
    for path in stale:
        os.remove(path)
    return stale


def model_tensors(modules: Dict[str, torch.nn.Module]) -> Dict[str, torch.Tensor]:
    return {
        f"{part}.{k}": v.detach().cpu().contiguous()
        for part, module in modules.items()
        for k, v in module.state_dict().items()
    }


def split_tensors(flat: Dict[str, torch.Tensor]) -> Dict[str, Dict[str, torch.Tensor]]:
    out: Dict[str, Dict[str, torch.Tensor]] = {part: {} for part in PARTS}
    for key, value in flat.items():
        part, _, name = key.partition(".")
        if part not in out:
            raise CheckpointError(f"unexpected tensor {key!r}")
        out[part][name] = value
    return out


def save_weights(path: str, modules: Dict[str, torch.nn.Module], meta: Dict):
    from safetensors.torch import save_file

    tensors = model_tensors(modules)
    metadata = {"format": FORMAT, "version": str(FORMAT_VERSION),
                "meta": json.dumps(meta)}  # fmt: skip
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def save_checkpoint(path: str, state: Dict[str, Any], meta: Dict):
    """``state`` holds tensors and plain containers only; ``meta`` is JSON."""
    payload = dict(state, format=FORMAT, version=FORMAT_VERSION, meta=json.dumps(meta))
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


#################
### reading ###
#################


def refuse_pickle(path: str) -> CheckpointError:
    """The sentence for a file that holds pickled objects (it is never loaded)."""
    names = []
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # the scan itself failing only loses the detail
        pass
    detail = f" (it references {', '.join(names[:3])})" if names else ""
    return CheckpointError(
        f"{path} holds pickled Python objects{detail}, which pml-soproxy never loads "
        "because unpickling can run arbitrary code; if it is a run of pml-soproxy < "
        "0.2, train the run again to get a safe weights_best.safetensors"
    )


def _not_a_checkpoint(path: str, why: str) -> CheckpointError:
    return CheckpointError(
        f"{path} is not a pml-soproxy run file ({why}); pass a run folder, its "
        f"{BEST_WEIGHTS} or its {CHECKPOINT}"
    )


def _check_file(path: str):
    if not os.path.exists(path):
        raise FileNotFoundError(f"no file or run folder at {path}")
    if os.path.isdir(path):
        raise _not_a_checkpoint(path, "a folder")
    if os.path.getsize(path) == 0:
        raise _not_a_checkpoint(path, "an empty file")


def load_checkpoint(path: str, mmap: bool = False) -> Dict[str, Any]:
    """Read a ``checkpoint_latest.pt`` with ``weights_only=True``; ``meta`` parsed.

    ``mmap=True`` reads only the metadata eagerly (cheap, for checks before a run
    is built)."""
    _check_file(path)
    if os.path.basename(path) in OLD_FILES:
        raise refuse_pickle(path)
    if not zipfile.is_zipfile(path):
        raise _not_a_checkpoint(path, "not a torch zip archive; truncated or another "
                                "format")  # fmt: skip
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError:
        raise refuse_pickle(path) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as err:
        raise _not_a_checkpoint(path, f"unreadable: {str(err).splitlines()[0]}")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise _not_a_checkpoint(path, "no pml-soproxy format marker")
    if state.get("version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format version {state.get('version')}, this pml-soproxy "
            f"reads version {FORMAT_VERSION}"
        )
    try:
        state["meta"] = json.loads(state["meta"])
    except (KeyError, TypeError, json.JSONDecodeError):
        raise _not_a_checkpoint(path, "its metadata is not JSON") from None
    return state


def load_weights(path: str) -> Dict[str, Any]:
    """``{"meta": ..., "trunk": sd, "embedder": sd, "loss": sd}`` from safetensors."""
    from safetensors import SafetensorError, safe_open

    _check_file(path)
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise _not_a_checkpoint(path, f"unreadable safetensors: {err}") from None
    if metadata.get("format") != FORMAT:
        raise _not_a_checkpoint(path, "a safetensors file without pml-soproxy "
                                "metadata")  # fmt: skip
    try:
        meta = json.loads(metadata["meta"])
    except (KeyError, json.JSONDecodeError):
        raise _not_a_checkpoint(path, "its metadata is not JSON") from None
    out: Dict[str, Any] = split_tensors(tensors)
    out["meta"] = meta
    return out


def load_run_file(path: str) -> Dict[str, Any]:
    """A run folder (its best weights, else its latest checkpoint) or one file:
    ``{"meta", "trunk", "embedder", "loss", "path"}``."""
    if os.path.isdir(path):
        for name in (BEST_WEIGHTS, CHECKPOINT):
            if os.path.isfile(os.path.join(path, name)):
                return load_run_file(os.path.join(path, name))
        old = [n for n in OLD_FILES if os.path.isfile(os.path.join(path, n))]
        if old:
            raise refuse_pickle(os.path.join(path, old[0]))
        raise FileNotFoundError(
            f"{path} holds no {BEST_WEIGHTS} or {CHECKPOINT}: is it a run folder of "
            "pml-soproxy train?"
        )
    if path.endswith(".safetensors"):
        loaded = load_weights(path)
    else:
        state = load_checkpoint(path)
        loaded = dict(state["model"], meta=state["meta"])
    loaded["path"] = path
    return loaded


###########
### RNG ###
###########


def _numpy_state(state) -> Dict[str, Any]:
    name, keys, pos, has_gauss, gauss = state
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
            "has_gauss": has_gauss, "gauss": gauss}  # fmt: skip


def _numpy_tuple(state: Dict[str, Any]):
    keys = state["keys"].numpy().astype(np.uint32)
    return (state["name"], keys, state["pos"], state["has_gauss"], state["gauss"])


def rng_state() -> Dict[str, Any]:
    """Every RNG the recipe draws from, in a weights_only-loadable form."""
    from pytorch_metric_learning.utils import common_functions as c_f

    version, internal, gauss = random.getstate()
    return {
        "python": [version, list(internal), gauss],
        "numpy": _numpy_state(np.random.get_state()),
        "pml_numpy": _numpy_state(c_f.NUMPY_RANDOM.get_state()),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: Dict[str, Any]):
    from pytorch_metric_learning.utils import common_functions as c_f

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(_numpy_tuple(state["numpy"]))
    c_f.NUMPY_RANDOM.set_state(_numpy_tuple(state["pml_numpy"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int):
    from pytorch_metric_learning.utils import common_functions as c_f

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    c_f.NUMPY_RANDOM = np.random.RandomState(seed)  # PML's samplers draw from this


def existing_run_files(folder: str) -> List[str]:
    names = (CHECKPOINT, BEST_WEIGHTS, RESULTS) + OLD_FILES
    return [n for n in names if os.path.exists(os.path.join(folder, n))]


def read_meta(path: str) -> Optional[Dict[str, Any]]:
    """The metadata of a checkpoint, reading no tensor data (mmap)."""
    return load_checkpoint(path, mmap=True)["meta"]
