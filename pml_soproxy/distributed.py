"""Multi-process training under ``torchrun`` (torch.distributed, DDP).

The maths of the gathered loss
------------------------------
Each rank computes embeddings ``e_r`` of its share of the global batch. PML's
``DistributedLossWrapper`` all-gathers them, so every rank evaluates the *same* loss
``L`` on the whole global batch, but only its own ``e_r`` carries autograd history
(``all_gather`` is not differentiable). Hence, for the trunk and embedder,

    rank r's gradient  = dL/de_r . de_r/dtheta,
    DDP's average      = (1/W) sum_r dL/de_r . de_r/dtheta = (1/W) dL/dtheta,

which is why the wrapper multiplies the loss by the world size ``W``: after DDP's
average the trunk sees exactly ``dL/dtheta``, the single-process gradient of the
concatenated batch.

The proxies are different: every rank sees every embedding, so each rank already
holds the *full* ``dL/dP``; the factor ``W`` would make it ``W dL/dP`` (and DDP's
average of identical tensors does not undo it). ``DistributedProxyLoss`` therefore
divides the proxy gradients by ``W`` before DDP averages them; the average also makes
them bit-identical on every rank, so the proxies never drift apart. The same holds for
the soft-orthogonality term, which depends on the proxies only.

Result: one step with W ranks and per-rank batch B equals one single-process step
with batch W*B (tested), so the learning rates of a single-process recipe carry over
unchanged when ``batch_size`` (the *global* batch) is kept; each rank loads
``batch_size / W`` images.
"""

import datetime
import os
from typing import Iterator, List, Optional

import numpy as np
import torch
import torch.distributed as dist
from pytorch_metric_learning.utils.distributed import DistributedLossWrapper


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main_process() -> bool:
    return rank() == 0


def launched_world_size() -> int:
    """The process count torchrun announces (1 without torchrun), known before the
    process group exists."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launched_by_torchrun() -> bool:
    return launched_world_size() > 1


def init_from_environment(
    device_name: str = "auto", timeout_minutes: int = 30
) -> torch.device:
    """Join the process group torchrun describes in the environment (RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR/PORT): NCCL with one GPU per rank, gloo on CPU."""
    use_cuda = torch.cuda.is_available() and device_name in ("auto", "cuda")
    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            timeout=datetime.timedelta(minutes=timeout_minutes),
        )
    if use_cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


def barrier():
    if world_size() > 1:
        dist.barrier()


def all_gather_objects(obj) -> List:
    if world_size() == 1:
        return [obj]
    gathered = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def wrap_model(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DDP-wrap a module that has trainable parameters (an Identity stays as it is)."""
    if world_size() == 1 or not any(p.requires_grad for p in module.parameters()):
        return module
    device_ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=device_ids)


class DistributedProxyLoss(torch.nn.Module):
    """PML's ``DistributedLossWrapper`` around a proxy loss, with the proxy gradients
    rescaled by ``1 / world_size`` (see the module docstring)."""

    def __init__(self, loss: torch.nn.Module):
        super().__init__()
        self.wrapper = DistributedLossWrapper(loss)
        scale = 1.0 / world_size()
        for parameter in loss.parameters():
            parameter.register_hook(lambda grad: grad * scale)

    def forward(self, embeddings, labels=None, indices_tuple=None):
        return self.wrapper(embeddings, labels, indices_tuple)


def wrap_loss(loss: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    if world_size() == 1:
        return loss
    return wrap_model(DistributedProxyLoss(loss), device)


class DistributedMPerClassSampler(torch.utils.data.Sampler):
    """M samples per class in every batch, with the global batch split across ranks.

    All ranks draw the same sequence of *global* batches (``global_batch_size //
    m`` classes, ``m`` images each) from ``RandomState(seed + epoch)``, and rank r keeps
    the r-th block of ``global_batch_size / W`` indices of each, so every rank's
    batch and the global batch are both M-per-class. PML's ``MPerClassSampler`` draws
    from a process-global RNG and knows nothing of ranks, hence this class.
    ``set_epoch`` is called automatically at every new iterator (the epoch counter
    is part of ``state_dict`` for resuming).
    """

    def __init__(
        self,
        labels,
        m: int,
        global_batch_size: int,
        iterations_per_epoch: int,
        seed: int = 0,
        num_replicas: Optional[int] = None,
        rank_: Optional[int] = None,
    ):
        self.num_replicas = world_size() if num_replicas is None else num_replicas
        self.rank = rank() if rank_ is None else rank_
        if global_batch_size % (m * self.num_replicas):
            raise ValueError(
                f"the global batch ({global_batch_size}) must split into {self.num_replicas} "
                f"per-rank batches that are multiples of m={m}"
            )
        labels = np.asarray(labels)
        self.classes = np.unique(labels)
        if len(self.classes) * m < global_batch_size:
            raise ValueError(
                f"{len(self.classes)} classes x m={m} cannot fill a batch of {global_batch_size}"
            )
        self.indices_of = {c: np.flatnonzero(labels == c) for c in self.classes}
        self.m = m
        self.global_batch_size = global_batch_size
        self.batch_size = global_batch_size // self.num_replicas
        self.iterations_per_epoch = iterations_per_epoch
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def state_dict(self):
        return {"epoch": self.epoch}

    def load_state_dict(self, state):
        self.epoch = state["epoch"]

    def global_batches(self, epoch: int) -> List[np.ndarray]:
        rng = np.random.RandomState(self.seed + epoch)
        batches = []
        for _ in range(self.iterations_per_epoch):
            chosen = rng.permutation(self.classes)[: self.global_batch_size // self.m]
            batch = [
                rng.choice(
                    self.indices_of[c],
                    size=self.m,
                    replace=len(self.indices_of[c]) < self.m,
                )
                for c in chosen
            ]
            batches.append(np.concatenate(batch))
        return batches

    def __iter__(self) -> Iterator[int]:
        start = self.rank * self.batch_size
        batches = self.global_batches(self.epoch)
        self.epoch += 1
        for batch in batches:
            yield from batch[start : start + self.batch_size].tolist()

    def __len__(self) -> int:
        return self.iterations_per_epoch * self.batch_size
