"""The training loader: machine defaults resolved in one place, pinned memory and
persistent workers on CUDA only, augmentations independent of the worker count."""

import random

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from pml_soproxy.training import loading
from pml_soproxy.training.config import SCHEMA, default_value, load_config
from pml_soproxy.training.loading import (
    DeviceBatches,
    LoaderSettings,
    auto_num_workers,
    loader_settings,
    train_loader,
)


@pytest.mark.parametrize(
    "cpus, processes, expected",
    [(1, 1, 0), (2, 1, 1), (16, 1, 15), (17, 1, 16), (128, 1, 16), (16, 4, 3),
     (16, 16, 0), (3, 2, 0)],
)  # fmt: skip
def test_auto_workers_are_the_cpu_share_less_one(cpus, processes, expected):
    assert auto_num_workers(cpus, processes) == expected


def test_auto_reads_affinity_and_torchrun_processes(monkeypatch):
    monkeypatch.setattr(loading.os, "sched_getaffinity", lambda pid: set(range(12)),
                        raising=False)  # fmt: skip
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert loading.available_cpus() == 12 and loading.processes_per_node() == 2
    assert loader_settings("auto", "cpu").num_workers == 5
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert loader_settings("auto", "cpu").num_workers == 11
    assert loader_settings(3, "cpu").num_workers == 3


def test_schema_default_is_auto_and_resolved_in_one_function():
    assert default_value(SCHEMA["num_workers"]) == "auto"
    config = load_config("cub200", {"data_root": None})
    assert config.num_workers == "auto"
    assert load_config("digits").num_workers == 0  # digits.yaml
    assert load_config("cub200", {"num_workers": "4"}).num_workers == 4  # a flag


@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:1"])
@pytest.mark.parametrize("workers", [0, 3])
def test_pinned_and_persistent_only_on_cuda(device, workers):
    settings = loader_settings(workers, device)
    cuda = device.startswith("cuda")
    assert settings == LoaderSettings(workers, cuda, cuda and workers > 0)


class Noise(Dataset):
    """Items drawn from torch's, random's and numpy's global generators."""

    def __init__(self, n=12):
        self.labels = np.arange(n) % 3

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        x = torch.tensor([float(index), torch.rand(()).item(), random.random(),
                          np.random.random()])  # fmt: skip
        return x, int(self.labels[index])


def epochs_of(settings, epochs=2, sampler=(3, 1, 4, 1, 5, 9, 2, 6)):
    torch.manual_seed(7)
    loader = train_loader(Noise(), 4, list(sampler), settings, "cpu")
    out = [torch.cat([x for x, _ in loader]) for _ in range(epochs)]
    return out, torch.rand(())  # the global stream after the epochs


def test_augmentations_do_not_depend_on_workers_or_persistence():
    base, after = epochs_of(LoaderSettings(0, False, False))
    assert base[0][:, 0].tolist() == [3, 1, 4, 1, 5, 9, 2, 6]  # the sampler's order
    assert not torch.equal(base[0], base[1])  # a new draw every epoch
    assert not torch.equal(base[0][1], base[0][3])  # same index, other position
    for settings in (LoaderSettings(2, False, False), LoaderSettings(2, False, True)):
        got, _ = epochs_of(settings)
        assert all(torch.equal(a, b) for a, b in zip(got, base)), settings


def test_the_global_stream_moves_by_one_draw_per_epoch():
    _, after = epochs_of(LoaderSettings(0, False, False))
    torch.manual_seed(7)
    for _ in range(2):
        torch.randint(2**62, (), dtype=torch.int64)
    assert torch.equal(after, torch.rand(()))
    state = (random.getstate(), np.random.get_state()[1].copy())
    epochs_of(LoaderSettings(0, False, False))
    assert random.getstate() == state[0]
    assert np.array_equal(np.random.get_state()[1], state[1])


def test_rank_changes_the_draws():
    from pml_soproxy.training.loading import SeededSamples

    item = (2, 123, 0)
    zero, one = SeededSamples(Noise(), 0)[item], SeededSamples(Noise(), 1)[item]
    assert torch.equal(zero[0], SeededSamples(Noise(), 0)[item][0])
    assert not torch.equal(zero[0], one[0])


def test_cuda_settings_build_a_pinned_persistent_loader_without_touching_cuda():
    settings = loader_settings(2, "cuda")
    loader = train_loader(Noise(), 4, list(range(8)), settings, "cuda")
    assert isinstance(loader, DeviceBatches) and loader.device.type == "cuda"
    assert loader.loader.pin_memory and loader.loader.persistent_workers
    assert loader.loader.num_workers == 2 and len(loader) == 2
    cpu = train_loader(Noise(), 4, list(range(8)), loader_settings(2, "cpu"), "cpu")
    assert not cpu.pin_memory and not cpu.persistent_workers


def test_device_batches_move_the_images_only():
    loader = [(torch.zeros(2, 3), torch.tensor([1, 2]))]
    ((data, labels),) = DeviceBatches(loader, "meta")
    assert data.device.type == "meta" and labels.device.type == "cpu"


def test_print_config_shows_what_auto_resolves_to(capsys, monkeypatch):
    from pml_soproxy import cli

    monkeypatch.setattr(loading, "available_cpus", lambda: 6)
    assert cli.main(["train", "--dataset", "cub200", "--device", "cpu",
                     "--print-config"]) == 0  # fmt: skip
    line = next(l for l in capsys.readouterr().out.splitlines()
                if l.startswith("num_workers:"))  # fmt: skip
    assert line == (
        'num_workers: "auto"  # the default; here: 5 worker(s), pinned memory off, '
        "persistent workers off (6 CPU(s), 1 process(es) per node) on cpu"
    )


@pytest.mark.slow
def test_cached_runs_are_the_uncached_run(tmp_path):
    """digits' 8x8 images are below cache_image_size: nothing is shrunk, so a run
    with either cache is the run without one, to the bit."""
    import os

    from pml_soproxy.training import train

    from .helpers import config

    plain = train(config(tmp_path, "plain", epochs=1))
    for mode in ("memory", "mmap"):
        cached = train(config(tmp_path, mode, epochs=1, cache_images=mode))
        assert cached["history"] == plain["history"] and cached["test"] == plain["test"]
    files = os.listdir(tmp_path / "mmap" / "image_cache")
    assert sorted(f.rsplit(".", 1)[1] for f in files) == ["json", "u8"]
