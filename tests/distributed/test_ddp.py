"""torch.distributed on CPU (gloo, 2 processes): the gathered loss, the proxy
gradient rescaling and the sampler against a single process."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pml_soproxy import SoftOrthogonalProxyAnchorLoss, distributed
from pml_soproxy.trunks import deit_trunk

WORLD = 2
PER_RANK = 8
NUM_CLASSES, EMBEDDING = 6, 16
TINY_DEIT = dict(img_size=32, patch_size=8, depth=2, embed_dim=64, num_heads=2)
STEPS = 3
# float32 sums in a different order (gathered batch, DDP all-reduce) differ in the last
# bits; three SGD steps keep that at ~1e-6 relative.
RTOL, ATOL = 1e-4, 1e-6


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build():
    torch.manual_seed(0)
    trunk = deit_trunk("deit_tiny_patch16_224", pretrained=False, **TINY_DEIT)
    embedder = torch.nn.Linear(trunk.output_size, EMBEDDING)
    loss = SoftOrthogonalProxyAnchorLoss(NUM_CLASSES, EMBEDDING, so_weight=2.0)
    return trunk, embedder, loss


def batches():
    generator = torch.Generator().manual_seed(1)
    for _ in range(STEPS):
        images = torch.randn(WORLD * PER_RANK, 3, 32, 32, generator=generator)
        labels = torch.arange(NUM_CLASSES).repeat(WORLD * PER_RANK)[: WORLD * PER_RANK]
        yield images, labels


def step(models, loss_fn, params, images, labels):
    trunk, embedder = models
    optimizer = torch.optim.SGD(params, lr=0.5)
    optimizer.zero_grad()
    loss_fn(embedder(trunk(images)), labels).backward()
    optimizer.step()


def snapshot(trunk, embedder, loss):
    return {
        "trunk": {k: v.detach().clone() for k, v in trunk.state_dict().items()},
        "embedder": {k: v.detach().clone() for k, v in embedder.state_dict().items()},
        "proxies": loss.proxies.detach().clone(),
    }


def worker(rank, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank))  # fmt: skip
    device = distributed.init_from_environment("cpu")
    trunk, embedder, loss = build()
    params = [*trunk.parameters(), *embedder.parameters(), *loss.parameters()]
    models = (
        distributed.wrap_model(trunk, device),
        distributed.wrap_model(embedder, device),
    )
    loss_fn = distributed.wrap_loss(loss, device)
    for images, labels in batches():
        mine = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        step(models, loss_fn, params, images[mine], labels[mine])
    torch.save(
        snapshot(trunk, embedder, loss), os.path.join(out_dir, f"rank{rank}.pth")
    )
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_equal_one_process_with_the_concatenated_batch(tmp_path):
    mp.spawn(worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)

    trunk, embedder, loss = build()
    params = [*trunk.parameters(), *embedder.parameters(), *loss.parameters()]
    initial = snapshot(trunk, embedder, loss)
    for images, labels in batches():
        step((trunk, embedder), loss, params, images, labels)
    single = snapshot(trunk, embedder, loss)

    ranks = [torch.load(tmp_path / f"rank{r}.pth") for r in range(WORLD)]
    # DDP keeps every rank identical, proxies included (bitwise)
    assert torch.equal(ranks[0]["proxies"], ranks[1]["proxies"])
    for key, value in ranks[0]["trunk"].items():
        assert torch.equal(value, ranks[1]["trunk"][key])

    moved = (single["proxies"] - initial["proxies"]).abs().max()
    assert moved > 1e-3  # the comparison below is not trivially true
    assert torch.allclose(ranks[0]["proxies"], single["proxies"], rtol=RTOL, atol=ATOL)
    for part in ("trunk", "embedder"):
        for key, value in single[part].items():
            assert torch.allclose(ranks[0][part][key], value, rtol=RTOL, atol=ATOL), key


def test_without_the_proxy_rescaling_the_proxy_step_would_be_world_size_times_larger():
    # The factor the wrapper corrects, computed without processes: PML multiplies the
    # gathered loss by W, and every rank already holds the full dL/dP.
    _, _, loss = build()
    embeddings = torch.randn(WORLD * PER_RANK, EMBEDDING)
    labels = torch.arange(WORLD * PER_RANK) % NUM_CLASSES
    (grad,) = torch.autograd.grad(loss(embeddings, labels), loss.proxies)
    (scaled,) = torch.autograd.grad(WORLD * loss(embeddings, labels), loss.proxies)
    assert torch.allclose(scaled / WORLD, grad)


def test_sampler_splits_m_per_class_global_batches_across_ranks():
    labels = np.repeat(np.arange(10), 7)
    kwargs = dict(
        m=3, global_batch_size=12, iterations_per_epoch=5, seed=4, num_replicas=2
    )
    samplers = [
        distributed.DistributedMPerClassSampler(labels, rank_=r, **kwargs)
        for r in (0, 1)
    ]
    epoch0 = [list(iter(s)) for s in samplers]
    epoch1 = [list(iter(s)) for s in samplers]
    assert epoch0 != epoch1  # epoch-aware
    assert len(epoch0[0]) == len(samplers[0]) == 5 * 6
    for epoch in (epoch0, epoch1):
        for b in range(5):
            per_rank = [np.asarray(e[b * 6 : (b + 1) * 6]) for e in epoch]
            for batch in per_rank + [np.concatenate(per_rank)]:
                _, counts = np.unique(labels[batch], return_counts=True)
                assert set(counts) == {3}  # M per class, per rank and globally
            assert not set(labels[per_rank[0]]) & set(labels[per_rank[1]])
    again = distributed.DistributedMPerClassSampler(labels, rank_=0, **kwargs)
    assert list(iter(again)) == epoch0[0]  # deterministic given the seed
    again.load_state_dict({"epoch": 1})
    assert list(iter(again)) == epoch1[0]  # resumable
    with pytest.raises(ValueError, match="multiples of m"):
        distributed.DistributedMPerClassSampler(
            labels,
            m=4,
            global_batch_size=12,
            iterations_per_epoch=1,
            num_replicas=2,
            rank_=0,
        )


def torchrun(tmp_path, *args, timeout=600):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(WORLD),
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()), *args]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, env=env, cwd=tmp_path
    )


@pytest.mark.slow
def test_a_crashing_rank_brings_the_job_down_with_its_error(tmp_path):
    script = tmp_path / "crash.py"
    script.write_text(
        "import os\n"
        "from pml_soproxy import training\n"
        "from pml_soproxy.training import run\n"
        "def explode(self, trainer):\n"
        "    raise RuntimeError('rank 1 exploded')\n"
        "if os.environ['RANK'] == '1':\n"
        "    run.Run.end_of_epoch = explode\n"
        "config = training.load_config('digits', dict(epochs=2, iterations_per_epoch=2,\n"
        "    val_fraction=0.2, batch_size=40, samples_per_class=10,\n"
        f"    num_workers=0, device='cpu', output_dir={str(tmp_path / 'crash')!r}))\n"
        "training.train(config)\n"
    )
    result = torchrun(tmp_path, str(script), timeout=300)
    assert result.returncode != 0
    assert "rank 1 exploded" in result.stderr
