"""No device-to-host synchronisation inside a training step.

A GPU runs ahead of Python only while nothing reads its results: ``.item()``,
``bool(tensor)``, ``.tolist()``, ``.numpy()``, and the ops whose output size depends
on values (``nonzero``, boolean indexing, ``unique``...) all wait for it. The trainer
reads the loss only at log points (every ``log_every`` iterations and at the end of
an epoch), and the SO regulariser's backward decides its fast path from the reducer,
not from the gradient's values.

On the CPU the reads are caught where CUDA would block: a ``TorchDispatchMode``
records the aten ops that synchronise on CUDA (``_local_scalar_dense`` is what
``item``/``bool``/``int``/``float`` become, plus the data-dependent ops), and
``Tensor.tolist``/``numpy`` are patched (they read memory without an aten op).
Host-side bookkeeping that stays on the CPU on a GPU machine too is not a read: the
optimizers' step counters (CPU tensors unless ``capturable``), the data loader's
sampler seeds (the batch is fetched in ``get_batch``, excluded), and ``one_hot``'s
class check (done on the host for CPU tensors only; CUDA asserts on the device).
With CUDA, ``torch.cuda.set_sync_debug_mode("error")`` checks the real thing.
"""

import linecache
import os
import traceback
from pathlib import Path

import pytest
import torch
from pytorch_metric_learning.reducers import SumReducer
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.data import TensorDataset

from pml_soproxy import SoftOrthogonalityRegularizer
from pml_soproxy.losses import SoftOrthogonalProxyAnchorLoss
from pml_soproxy.training.trainer import SOProxyTrainer

#: aten ops that make the host wait for a CUDA device
SYNCING_OPS = {
    "_local_scalar_dense",  # .item(), bool(), int(), float() of a tensor
    "nonzero",
    "nonzero_static",
    "masked_select",
    "_unique",
    "_unique2",
    "unique_dim",
    "unique_consecutive",
    "equal",
    "is_nonzero",
    "repeat_interleave",
}


def host_side_caller():
    """True for a read that CUDA does not make: the data loader's (seeds, sampler
    order: CPU tensors) and one_hot's host-side class check."""
    stack = traceback.extract_stack()[:-3]
    if any("/torch/utils/data/" in frame.filename for frame in stack):
        return True
    for frame in reversed(stack):
        if "/torch/" in frame.filename:
            continue
        line = linecache.getline(frame.filename, frame.lineno)
        return "one_hot(" in line
    return False


REPOSITORY = str(Path(__file__).resolve().parents[2]) + os.sep


def pml_soproxy_site():
    """``file:function`` of the innermost frame outside torch (where the read is)."""
    for frame in reversed(traceback.extract_stack()[:-3]):
        if "/torch/" not in frame.filename and "test_host_syncs" not in frame.filename:
            path = frame.filename.split("site-packages/")[-1]
            if path.startswith(REPOSITORY):  # a checkout anywhere
                path = path[len(REPOSITORY) :]
            return f"{path}:{frame.name}"
    return "?"


class DeviceReads(TorchDispatchMode):
    """Records every would-be device read while active (see the module docstring).

    ``host_tensors`` returns tensors that live on the host on a GPU machine too;
    ``phase`` labels each read (the test sets it)."""

    def __init__(self, host_tensors=lambda: ()):
        super().__init__()
        self.reads = []
        self.phase = "outside"
        self.host_tensors = host_tensors

    def record(self, what, tensor=None):
        if self.phase == "data":
            return
        if tensor is not None and any(tensor is t for t in self.host_tensors()):
            return
        if host_side_caller():
            return
        self.reads.append((self.phase, what, pml_soproxy_site()))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        boolean_index = name == "index" and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool
            for i in (args[1] if len(args) > 1 else ())
        )
        if name in SYNCING_OPS or boolean_index:
            first = args[0] if args and isinstance(args[0], torch.Tensor) else None
            self.record(name, first)
        return func(*args, **(kwargs or {}))


@pytest.fixture
def device_reads(monkeypatch):
    """A ``DeviceReads`` whose ``tolist``/``numpy`` patches are in place."""
    detector = DeviceReads()
    for method in ("tolist", "numpy"):
        original = getattr(torch.Tensor, method)

        def patched(self, *args, _original=original, _method=method, **kwargs):
            if detector.active:
                detector.record(_method, self)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, method, patched)
    detector.active = False
    return detector


class active:
    """Turns the detector on (its dispatch mode and the patched methods)."""

    def __init__(self, detector):
        self.detector = detector

    def __enter__(self):
        self.detector.active = True
        self.detector.__enter__()
        return self.detector

    def __exit__(self, *exc):
        self.detector.__exit__(*exc)
        self.detector.active = False


# ------------------------------------------------------------------ the detector
def test_the_detector_sees_reads(device_reads):
    x = torch.randn(6)
    with active(device_reads):
        float(x.sum())
        bool(x.max() > 0)
        x[x > 0].sum()
        x.tolist()
        x.numpy()
        torch.nonzero(x)
    names = [what for _, what, _ in device_reads.reads]
    assert names.count("_local_scalar_dense") == 2
    assert {"index", "tolist", "numpy", "nonzero"} <= set(names)


# -------------------------------------------------------------- the regulariser
@pytest.mark.parametrize("shape", [(300, 12), (6, 16)])
@pytest.mark.parametrize("reducer", [None, SumReducer()])  # both backward branches
def test_so_regulariser_forward_and_backward_never_read_the_device(
    device_reads, shape, reducer
):
    weights = torch.randn(*shape, requires_grad=True)
    regularizer = SoftOrthogonalityRegularizer(reducer=reducer)
    with active(device_reads):
        for _ in range(2):
            regularizer(weights).backward()
    assert device_reads.reads == []
    assert torch.isfinite(weights.grad).all()


# ------------------------------------------------------------------ the trainer
class ProxySoftmaxWithSO(torch.nn.Module):
    """A sync-free proxy loss (softmax over cosine to proxies) plus SO on the
    proxies, so that the test sees the trainer's and the regulariser's reads only."""

    def __init__(self, num_classes, embedding_size):
        super().__init__()
        self.proxies = torch.nn.Parameter(torch.randn(num_classes, embedding_size))
        self.regularizer = SoftOrthogonalityRegularizer()

    def forward(self, embeddings, labels, indices_tuple=None):
        cos = torch.nn.functional.normalize(embeddings, dim=1) @ (
            torch.nn.functional.normalize(self.proxies, dim=1).t()
        )
        loss = torch.nn.functional.cross_entropy(16 * cos, labels.to(cos.device))
        return loss + 0.1 * self.regularizer(self.proxies)


def tiny_trainer(loss, iterations, log_every, device="cpu", num_classes=12):
    torch.manual_seed(0)
    data = torch.randn(96, 10)
    labels = torch.arange(96) % num_classes
    trunk = torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.ReLU()).to(device)
    embedder = torch.nn.Linear(16, 8).to(device)
    loss = loss.to(device)
    optimizers = {
        "trunk_optimizer": torch.optim.AdamW(trunk.parameters(), lr=1e-3),
        "embedder_optimizer": torch.optim.AdamW(embedder.parameters(), lr=1e-3),
        "metric_loss_optimizer": torch.optim.AdamW(loss.parameters(), lr=1e-2),
    }
    schedulers = {
        name.replace("_optimizer", "_scheduler_by_iteration"):
        torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1 / (1 + step))
        for name, opt in optimizers.items()
    }  # fmt: skip
    parameters = list(trunk.parameters()) + list(embedder.parameters())
    clippers = {
        "trunk_grad_clipper": lambda: torch.nn.utils.clip_grad_norm_(parameters, 1.0)
    }
    return SOProxyTrainer(
        models={"trunk": trunk, "embedder": embedder},
        optimizers=optimizers,
        batch_size=24,
        loss_funcs={"metric_loss": loss},
        dataset=TensorDataset(data, labels),
        iterations_per_epoch=iterations,
        data_device=torch.device(device),
        dataloader_num_workers=0,
        lr_schedulers=schedulers,
        gradient_clippers=clippers,
        log_every=log_every,
        show_progress=False,
        end_of_iteration_hook=lambda trainer: None,
        end_of_epoch_hook=lambda trainer: True,
    )


def optimizer_steps(trainer):
    """The optimizers' step counters: CPU tensors on a GPU machine too."""
    return [
        state["step"]
        for optimizer in trainer.optimizers.values()
        for state in optimizer.state.values()
        if isinstance(state.get("step"), torch.Tensor)
    ]


def watch_phases(trainer, detector):
    """Label the detector's reads by phase: 'step' inside forward_and_backward,
    'data' while fetching the batch (host side), 'loop' elsewhere in train()."""
    step, get_batch = trainer.forward_and_backward, trainer.get_batch

    def forward_and_backward():
        detector.phase = "step"
        try:
            step()
        finally:
            detector.phase = "loop"

    def fetch():
        detector.phase = "data"
        try:
            return get_batch()
        finally:
            detector.phase = "step"

    trainer.forward_and_backward = forward_and_backward
    trainer.get_batch = fetch
    trainer.end_of_iteration_hook = lambda t: detector.reads.append(
        ("log point", t.epoch, t.iteration)
    )
    detector.host_tensors = lambda: optimizer_steps(trainer)
    detector.phase = "loop"


def test_training_loop_reads_the_device_only_at_log_points(device_reads):
    iterations, log_every, epochs = 7, 3, 2
    trainer = tiny_trainer(ProxySoftmaxWithSO(12, 8), iterations, log_every)
    watch_phases(trainer, device_reads)
    with active(device_reads):
        trainer.train(1, epochs)
    steps = [r for r in device_reads.reads if r[0] == "step"]
    assert steps == []  # forward, loss, SO backward, clipping, optimizers, schedulers
    # each log point: exactly one read, just before the log hook, at iterations 3, 6
    # and 7 (the last) of each epoch
    events = [r for r in device_reads.reads if r[0] != "step"]
    expected = []
    for epoch in range(1, epochs + 1):
        for iteration in (2, 5, 6):
            expected += [("loop", "tolist"), ("log point", epoch, iteration)]
    assert [e[:2] if e[0] == "loop" else e for e in events] == expected
    assert trainer.epoch_loss > 0


def test_the_loop_test_can_fail(device_reads):
    # a loss that reads the device in every step is caught
    class Reading(ProxySoftmaxWithSO):
        def forward(self, embeddings, labels, indices_tuple=None):
            loss = super().forward(embeddings, labels)
            if loss > 1e9:  # bool() of a device tensor
                raise AssertionError
            return loss

    trainer = tiny_trainer(Reading(12, 8), 4, 2)
    watch_phases(trainer, device_reads)
    with active(device_reads):
        trainer.train(1, 1)
    steps = [r for r in device_reads.reads if r[0] == "step"]
    assert len(steps) == 4 and all("test_host_syncs" not in s[2] for s in steps)


#: the reads left in a step with Proxy Anchor (not in the trainer or the SO
#: regulariser): our label-range guard, PML's ProxyAnchorLoss counting the proxies
#: with positives (torch.where(...) -> len), PML's DivisorReducer NaN check
KNOWN_LOSS_READS = {
    "pml_soproxy/losses/soft_orthogonal_proxy_anchor_loss.py:check_labels",
    "pytorch_metric_learning/losses/proxy_anchor_loss.py:compute_loss",
    "pytorch_metric_learning/reducers/divisor_reducer.py:sum_and_divide",
}


def test_proxy_anchor_step_reads_only_in_the_known_loss_places(device_reads):
    trainer = tiny_trainer(SoftOrthogonalProxyAnchorLoss(12, 8), 4, 2)
    watch_phases(trainer, device_reads)
    with active(device_reads):
        trainer.train(1, 1)
    sites = {site for phase, _, site in device_reads.reads if phase == "step"}
    assert sites <= KNOWN_LOSS_READS, sites - KNOWN_LOSS_READS


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_training_step_does_not_synchronise_on_cuda():
    trainer = tiny_trainer(ProxySoftmaxWithSO(12, 8), 5, 5, device="cuda")
    step = trainer.forward_and_backward

    def strict_step():
        torch.cuda.set_sync_debug_mode("error")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode(0)

    trainer.forward_and_backward = strict_step
    trainer.train(1, 1)
    assert trainer.epoch_loss > 0
