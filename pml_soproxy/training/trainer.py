"""PML's ``MetricLossOnly`` with the loop the recipe needs.

* fp16 loss scaling (PML's trainer has none);
* a fresh data-loader iterator at the start of every epoch, so an epoch draws its
  worker seeds and sampler order at the same point whether the run is resumed or not;
* the loss is read from the device only every ``log_every`` iterations and at the end
  of an epoch (the progress bar, the epoch mean and the NaN check use that one read);
  nothing else in a step waits for the device (tests/training/test_host_syncs.py):
  batches go to the device without blocking (asynchronous from pinned memory);
* a non-finite loss stops the run at once with its epoch and iteration, before the
  epoch is checkpointed;
* one progress bar, on rank 0 only; the logged loss is the global batch's loss
  (PML's ``DistributedLossWrapper`` returns ``world_size`` times it).
"""

import torch
import tqdm
from pytorch_metric_learning import trainers


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


class SOProxyTrainer(trainers.MetricLossOnly):
    def __init__(self, *args, scaler=None, log_every=10, world_size=1,
                 show_progress=True, on_nonfinite=None, **kwargs):  # fmt: skip
        self.scaler = scaler
        self.log_every = log_every
        self.world_size = world_size
        self.show_progress = show_progress
        self.on_nonfinite = on_nonfinite
        self.epoch_losses = []
        # training.loading.LoaderSettings; None: PML's own loader
        self.loader_settings = kwargs.pop("loader_settings", None)
        super().__init__(*args, **kwargs)

    # ------------------------------------------------------------ fp16 scaling
    def backward(self):
        if self.scaler is None:
            return super().backward()
        self.scaler.scale(self.losses["total_loss"]).backward()

    def clip_gradients(self):
        if self.scaler is not None:
            for optimizer in self.optimizers.values():
                self.scaler.unscale_(optimizer)
        super().clip_gradients()

    def step_optimizers(self):
        if self.scaler is None:
            return super().step_optimizers()
        for optimizer in self.optimizers.values():
            self.scaler.step(optimizer)
        self.scaler.update()

    # ------------------------------------------------------------------- loop
    def get_batch(self):
        # to the device without blocking the host (asynchronous from pinned memory);
        # PML's own transfers later in the step are then no-ops
        data, labels = super().get_batch()
        return self.to_data_device(data), self.to_data_device(labels)

    def to_data_device(self, x):
        if isinstance(x, torch.Tensor) and self.data_device is not None:
            return x.to(self.data_device, non_blocking=True)
        return x

    def initialize_dataloader(self):
        from pytorch_metric_learning.utils import common_functions as c_f

        from .loading import train_loader

        if self.loader_settings is None:
            self.dataloader = c_f.get_train_dataloader(
                self.dataset,
                self.batch_size,
                self.sampler,
                self.dataloader_num_workers,
                self.collate_fn,
            )
        else:  # per-sample seeds, pinned memory and persistent workers on CUDA
            from .. import distributed

            self.dataloader = train_loader(
                self.dataset, self.batch_size, self.sampler, self.loader_settings,
                self.data_device, self.collate_fn, rank=distributed.rank(),
            )  # fmt: skip
        if not self.iterations_per_epoch:
            self.iterations_per_epoch = len(self.dataloader)

    def train(self, start_epoch=1, num_epochs=1):
        self.initialize_dataloader()
        for self.epoch in range(start_epoch, num_epochs + 1):
            self.set_to_train()
            self.dataloader_iter = iter(self.dataloader)
            total = torch.zeros((), dtype=torch.float64, device=self.data_device)
            first_bad = torch.full((), -1, dtype=torch.long, device=self.data_device)
            bar = tqdm.tqdm(
                range(self.iterations_per_epoch),
                desc=f"epoch {self.epoch}/{num_epochs}",
                disable=not self.show_progress,
                leave=False,
            )
            for self.iteration in bar:
                self.forward_and_backward()
                loss = self.losses["total_loss"].detach()
                total += loss
                first_bad = torch.where(
                    (~torch.isfinite(loss)) & (first_bad < 0),
                    torch.full_like(first_bad, self.iteration),
                    first_bad,
                )
                last = self.iteration + 1 == self.iterations_per_epoch
                if (self.iteration + 1) % self.log_every == 0 or last:
                    # the one device read: first bad iteration, current loss, sum
                    bad, value, summed = torch.stack(
                        [first_bad.double(), loss.double(), total]
                    ).tolist()
                    self.check_finite(int(bad))
                    bar.set_postfix(loss=f"{value / self.world_size:.4f}")
                    self.end_of_iteration_hook(self)
                self.step_lr_schedulers(end_of_epoch=False)
            self.step_lr_schedulers(end_of_epoch=True)
            # read at the last iteration, which is always a log point
            self.epoch_loss = summed / self.iterations_per_epoch / self.world_size
            self.zero_losses()
            if self.end_of_epoch_hook(self) is False:
                break

    def check_finite(self, bad: int):
        """``bad``: the first iteration (0-based) with a non-finite loss, or -1."""
        if bad >= 0:
            raise NonFiniteLossError(
                self.on_nonfinite(self.epoch, bad + 1, self.iterations_per_epoch)
                if self.on_nonfinite
                else f"the loss is not finite at epoch {self.epoch}, iteration {bad + 1}"
            )
