"""The training data loader: its settings from the machine, one random stream per
sample, batches copied to the GPU without blocking.

* ``num_workers: auto`` (the schema default) is resolved here and only here, by
  :func:`loader_settings`: one worker per CPU this process may use, less one for
  the process itself, at most :data:`MAX_AUTO_WORKERS`; under torchrun the CPUs are
  shared among the processes of a node. Pinned memory and persistent workers are on
  for a CUDA device only (they only help a GPU; on a CPU they cost memory).
* Every training sample draws its random augmentation from its own seed: one draw
  of torch's global generator per epoch, mixed with the rank and the sample's
  position in the epoch (:class:`SampleSeeds`, :class:`SeededSamples`). So the
  augmentations depend neither on the number of workers nor on whether workers
  persist from one epoch to the next, and ``--resume`` replays them exactly: the
  per-epoch draw comes from the global generator, whose state is checkpointed.
  The data loader's own worker seeds come from a private generator and are
  overridden for every sample; the global random state of the process that runs
  the transform (the main process with 0 workers) is left as it was.
* With pinned memory, the image batch is copied to the device with
  ``non_blocking=True`` (:class:`DeviceBatches`): the host queues the copy and the
  next step without waiting for the GPU. Labels stay on the CPU (PML reads them as
  numpy arrays).
"""

import os
import random
from dataclasses import dataclass
from typing import Any, Dict, Optional, Union

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler

#: the most workers ``num_workers: auto`` starts: past this, decoding rarely gets
#: faster and every worker holds a copy of the transforms and a prefetch queue
MAX_AUTO_WORKERS = 16


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def processes_per_node() -> int:
    """Training processes sharing this machine's CPUs (torchrun's LOCAL_WORLD_SIZE)."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def auto_num_workers(
    cpus: Optional[int] = None, processes: Optional[int] = None
) -> int:
    """``num_workers: auto``: the CPUs of this process's share, less one for the
    process itself (which runs the training step), in ``0..MAX_AUTO_WORKERS``."""
    cpus = available_cpus() if cpus is None else cpus
    processes = processes_per_node() if processes is None else processes
    return max(0, min(MAX_AUTO_WORKERS, cpus // max(1, processes) - 1))


@dataclass(frozen=True)
class LoaderSettings:
    num_workers: int
    pin_memory: bool
    persistent_workers: bool

    def describe(self) -> str:
        on = {True: "on", False: "off"}
        return (
            f"{self.num_workers} worker(s), pinned memory {on[self.pin_memory]}, "
            f"persistent workers {on[self.persistent_workers]}"
        )


def loader_settings(num_workers: Union[int, str], device) -> LoaderSettings:
    """The one place where the loader's machine-dependent defaults are resolved."""
    device = torch.device(device)
    workers = auto_num_workers() if num_workers == "auto" else int(num_workers)
    cuda = device.type == "cuda"
    return LoaderSettings(
        workers, pin_memory=cuda, persistent_workers=cuda and workers > 0
    )


def describe_auto(num_workers: Union[int, str], device_name: str) -> str:
    """What ``num_workers`` and ``device`` resolve to on this machine, in words
    (``pml-soproxy train --print-config``)."""
    from ..device import resolve_device

    try:
        device = resolve_device(device_name)
    except (RuntimeError, ValueError):
        return f"device {device_name} is not available here"
    settings = loader_settings(num_workers, device)
    where = ""
    if num_workers == "auto":
        where = (
            f" ({available_cpus()} CPU(s), {processes_per_node()} process(es) per "
            "node)"
        )
    return f"here: {settings.describe()}{where} on {device}"


################################
### one random stream a sample ###
################################


class SampleSeeds(Sampler):
    """``sampler``'s indices as ``(index, epoch_seed, position)``.

    ``epoch_seed`` is drawn from torch's global generator once per pass (when the
    pass starts), ``position`` counts the items of the pass. The labels, and so the
    order of the batches, are ``sampler``'s own.
    """

    def __init__(self, sampler):
        self.sampler = sampler

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        epoch_seed = int(torch.randint(2**62, (), dtype=torch.int64))
        for position, index in enumerate(self.sampler):
            yield int(index), epoch_seed, position


def sample_seed(epoch_seed: int, rank: int, position: int) -> int:
    """A 64-bit seed, well mixed from the three numbers (numpy's SeedSequence)."""
    words = np.random.SeedSequence([epoch_seed, rank, position]).generate_state(2)
    return (int(words[0]) << 32) | int(words[1])


class SeededSamples(Dataset):
    """``dataset[index]`` under the random state of its own seed.

    Takes the ``(index, epoch_seed, position)`` items of :class:`SampleSeeds` and
    seeds torch's CPU generator, ``random`` and numpy's global generator (the ones
    timm and torchvision transforms draw from) with :func:`sample_seed` before
    fetching; in the main process (0 workers) their previous states are restored
    afterwards, so the training step's own random draws are unaffected.
    """

    def __init__(self, dataset, rank: int = 0):
        self.dataset = dataset
        self.rank = rank

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item):
        index, epoch_seed, position = item
        seed = sample_seed(epoch_seed, self.rank, position)
        in_worker = torch.utils.data.get_worker_info() is not None
        if not in_worker:
            saved = (torch.random.default_generator.get_state(), random.getstate(),
                     np.random.get_state())  # fmt: skip
        torch.random.default_generator.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed & 0xFFFFFFFF)
        try:
            return self.dataset[index]
        finally:
            if not in_worker:
                torch.random.default_generator.set_state(saved[0])
                random.setstate(saved[1])
                np.random.set_state(saved[2])


##########################
### the loader itself ###
##########################


class DeviceBatches:
    """``loader``'s batches with their images (the first element) on ``device``,
    copied with ``non_blocking=True`` from pinned memory."""

    def __init__(self, loader: DataLoader, device):
        self.loader = loader
        self.device = torch.device(device)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            data, *rest = batch
            yield [data.to(self.device, non_blocking=True), *rest]


def train_loader(
    dataset,
    batch_size: int,
    sampler,
    settings: LoaderSettings,
    device,
    collate_fn=None,
    rank: int = 0,
):
    """The training DataLoader: ``batch_size`` items of ``sampler`` per batch (the
    last incomplete batch dropped), each sample seeded by :class:`SeededSamples`,
    workers, pinning and persistence from ``settings``."""
    if isinstance(sampler, BatchSampler):
        raise TypeError("train_loader takes a sampler of indices, not of batches")
    kwargs: Dict[str, Any] = {}
    if settings.num_workers > 0:
        kwargs["persistent_workers"] = settings.persistent_workers
    loader = DataLoader(
        SeededSamples(dataset, rank),
        batch_size=int(batch_size),
        sampler=SampleSeeds(sampler),
        drop_last=True,
        num_workers=settings.num_workers,
        collate_fn=collate_fn,
        pin_memory=settings.pin_memory,
        # worker seeds from a private generator: every sample is reseeded anyway,
        # and the global generator is not drawn from (persistent or not)
        generator=torch.Generator().manual_seed(0),
        **kwargs,
    )
    if settings.pin_memory:
        return DeviceBatches(loader, device)
    return loader
