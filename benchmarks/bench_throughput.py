"""Training throughput of the pml-soproxy pipeline against a bare timm loop.

For each config (``tiny``: the digits demo's 2-block DeiT at 32 px, batch 60;
``deit-s``: deit_small_distilled_patch16_224 at 224 px, batch 120; both random init,
data = the in-memory ``digits`` dataset, no validation split), in one process:

  pipeline   ``pml_soproxy.training.Run(config).train()``: PML's MetricLossOnly
             trainer with MPerClassSampler, the timm train transform, AdamW for
             trunk/embedder/proxies, gradient clipping, LR schedulers, record-keeper
             hooks, as ``pml-soproxy train`` runs it (through ``TimedRun``, a
             ``Run`` subclass whose trainer subclass, ``TimedTrainer``, takes the
             timestamps). Iteration times come from
             timestamps at every per-iteration ``step_lr_schedulers`` call; the
             first iteration of each round (data-loader start-up) is dropped. Time spent inside
             the trainer's ``get_batch`` (data loading as the pipeline sees it) and
             the end-of-epoch work (proxy statistics, logs, checkpoint) are
             reported separately.
  bare       the same modules, loss and optimizers on a batch already in memory:
             forward, SO Proxy Anchor loss, backward, optimizer steps.
  The two alternate for --rounds rounds (machine load hits both alike).
  loading    the pipeline's DataLoader alone (same dataset, transform, sampler,
             workers): seconds per batch.

Overhead = (pipeline - loading - bare) / bare per iteration (target: at most 10%);
the raw (pipeline - bare) / bare is printed too.

    python benchmarks/bench_throughput.py                       # CPU
    python benchmarks/bench_throughput.py --device cuda --deit-s-iterations 20
"""

import argparse
import statistics
import tempfile
import time

import torch
from benchutil import meta, synchronize, table, write_json
from pytorch_metric_learning.utils import common_functions as c_f

from pml_soproxy import training
from pml_soproxy.training.trainer import SOProxyTrainer

CONFIGS = {
    "tiny": {},  # the digits demo config as shipped
    "deit-s": {
        "model_name": "deit_small_distilled_patch16_224",
        "trunk_kwargs": {},
        "batch_size": 120,
        "samples_per_class": 24,
    },
}


class TimedTrainer(SOProxyTrainer):
    """The recipe's trainer with timestamps: one at every per-iteration
    ``step_lr_schedulers`` call (and after the data loader starts), the time
    spent in ``get_batch``. Only public trainer methods are extended."""

    probe = None  # a Probe, set by TimedRun

    def step_lr_schedulers(self, end_of_epoch=False):
        if not end_of_epoch:
            synchronize(self.probe.device)
            self.probe.marks.append(time.perf_counter())
        return super().step_lr_schedulers(end_of_epoch)

    def get_batch(self):
        start = time.perf_counter()
        out = super().get_batch()
        self.probe.loading.append(time.perf_counter() - start)
        return out

    def initialize_dataloader(self):
        super().initialize_dataloader()
        self.probe.marks.append(time.perf_counter())


class Probe:
    """What one ``Run.train()`` recorded."""

    def __init__(self, device):
        self.device = device
        self.marks, self.loading = [], []


class TimedRun(training.Run):
    """A ``Run`` that trains with :class:`TimedTrainer` (a fresh :class:`Probe`
    per ``train()``) and times its end-of-epoch work."""

    trainer_class = TimedTrainer  # what Run.make_trainer builds

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.probe = Probe(self.device)
        self.epoch_end = []

    def make_trainer(self):
        trainer = super().make_trainer()
        trainer.probe = self.probe
        return trainer

    def train(self):
        self.probe = Probe(self.device)
        return super().train()

    def end_of_epoch(self, trainer):
        start = time.perf_counter()
        out = super().end_of_epoch(trainer)
        self.epoch_end.append(time.perf_counter() - start)
        return out


def bare_loop(run, batch, labels, repeats, device):
    # the trunk as the trainer sees it (under autocast where the config asks for it)
    trunk, embedder, loss = run.model.trunk_for_eval, run.model.embedder, run.loss
    optimizers = list(run.optimizers.values())
    trunk.train()
    embedder.train()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        value = loss(embedder(trunk(batch)), labels)
        value.backward()
        for opt in optimizers:
            opt.step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def loading_only(run, batches):
    config = run.config
    from pytorch_metric_learning.samplers import MPerClassSampler

    sampler = MPerClassSampler(
        run.data.train.labels,
        m=config.samples_per_class,
        batch_size=config.batch_size,
        length_before_new_iter=(batches + 1) * config.batch_size,
    )
    loader = c_f.get_train_dataloader(
        run.data.train, config.batch_size, sampler, config.num_workers, None
    )
    iterator = iter(loader)
    next(iterator)  # worker start-up
    times = []
    for _ in range(batches):
        start = time.perf_counter()
        next(iterator)
        times.append(time.perf_counter() - start)
    return times


def bench_config(name, args):
    iterations = args.tiny_iterations if name == "tiny" else args.deit_s_iterations
    overrides = dict(
        CONFIGS[name],
        device=args.device,
        val_fraction=0,
        warmup_epochs=0,
        epochs=1,
        iterations_per_epoch=iterations + 1,
        num_workers=args.num_workers,
        seed=0,
    )
    with tempfile.TemporaryDirectory() as tmp:
        overrides["output_dir"] = tmp
        config = training.load_config("digits", overrides)
        run = TimedRun(config)
        device = run.device
        batch = torch.stack([run.data.train[i][0] for i in range(config.batch_size)])
        batch = batch.to(device)
        labels = torch.arange(config.batch_size, device=device) % run.data.num_classes
        print(f"[{name}] bare loop warm-up ...", flush=True)
        bare_loop(run, batch, labels, 1, device)
        bare, pipeline_steps, pipeline_loading = [], [], []
        for r in range(args.rounds):  # alternate, so that machine load hits both
            print(f"[{name}] round {r + 1}: bare loop ({iterations}) ...", flush=True)
            bare += bare_loop(run, batch, labels, iterations, device)
            print(
                f"[{name}] round {r + 1}: pipeline ({iterations + 1} iterations) ...",
                flush=True,
            )
            run.train()
            probe = run.probe
            steps = [b - a for a, b in zip(probe.marks, probe.marks[1:])]
            pipeline_steps += steps[1:]  # drop the first iteration of each round
            pipeline_loading += probe.loading[1:]
        print(f"[{name}] loading only ...", flush=True)
        loading = loading_only(run, max(iterations, 5))
    pipe = statistics.median(pipeline_steps)
    bare_s = statistics.median(bare)
    load_s = statistics.median(loading)
    in_pipe_load = statistics.median(pipeline_loading)
    return {
        "config": name,
        "model": config.model_name,
        "trunk_kwargs": config.trunk_kwargs,
        "image_size": run.model.trunk.data_config["input_size"][-1],
        "batch_size": config.batch_size,
        "num_workers": config.num_workers,
        "iterations_timed": len(pipeline_steps),
        "pipeline_s": pipe,
        "pipeline_steps_s": pipeline_steps,
        "pipeline_get_batch_s": in_pipe_load,
        "bare_s": bare_s,
        "bare_steps_s": bare,
        "loading_only_s": load_s,
        "end_of_epoch_s": (statistics.median(run.epoch_end) if run.epoch_end else None),
        "rounds": args.rounds,
        "pipeline_images_per_s": config.batch_size / pipe,
        "bare_images_per_s": config.batch_size / bare_s,
        "overhead_excluding_loading": (pipe - in_pipe_load - bare_s) / bare_s,
        "overhead_raw": (pipe - bare_s) / bare_s,
        "loading_share_of_pipeline": in_pipe_load / pipe,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--configs", default="tiny,deit-s")
    parser.add_argument("--tiny-iterations", type=int, default=20)
    parser.add_argument("--deit-s-iterations", type=int, default=2)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument(
        "--rounds", type=int, default=3, help="bare/pipeline alternations"
    )
    parser.add_argument("--output", default="benchmarks/results/throughput.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [bench_config(name, args) for name in args.configs.split(",")]
    print(
        f"\n{args.device}, {torch.get_num_threads()} threads, digits data in memory, "
        f"{args.num_workers} loader workers; medians per iteration"
    )
    print(
        table(
            [
                "config",
                "batch",
                "iters",
                "bare img/s",
                "pipeline img/s",
                "bare s/it",
                "pipeline s/it",
                "loading in pipeline s/it",
                "loading alone s/it",
                "overhead excl. loading",
                "overhead raw",
                "end of epoch s",
            ],
            [
                [
                    r["config"],
                    r["batch_size"],
                    r["iterations_timed"],
                    f"{r['bare_images_per_s']:.1f}",
                    f"{r['pipeline_images_per_s']:.1f}",
                    f"{r['bare_s']:.4f}",
                    f"{r['pipeline_s']:.4f}",
                    f"{r['pipeline_get_batch_s']:.4f}",
                    f"{r['loading_only_s']:.4f}",
                    f"{100 * r['overhead_excluding_loading']:+.1f}%",
                    f"{100 * r['overhead_raw']:+.1f}%",
                    f"{r['end_of_epoch_s']:.2f}",
                ]
                for r in rows
            ],
        )
    )
    write_json(args.output, {"meta": meta(args), "rows": rows})


if __name__ == "__main__":
    main()
