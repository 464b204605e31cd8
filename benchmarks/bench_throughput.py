"""Training throughput of the pml-soproxy pipeline against a bare timm loop.

For each config (``tiny``: the digits demo's 2-block DeiT at 32 px, batch 60;
``deit-s``: deit_small_distilled_patch16_224 at 224 px, batch 120; both random init,
data = the in-memory ``digits`` dataset, no validation split), in one process:

  pipeline   ``pml_soproxy.training.Run(config).train()``: PML's MetricLossOnly
             trainer with MPerClassSampler, the timm train transform, AdamW for
             trunk/embedder/proxies, gradient clipping, LR schedulers, record-keeper
             hooks, as ``pml-soproxy train`` runs it. Iteration times come from
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


class Probe:
    """Timestamps patched into the trainer class for the duration of a run."""

    def __init__(self, device):
        self.device = device
        self.marks, self.loading, self.epoch_ends = [], [], []
        cls = SOProxyTrainer
        self.saved = {
            "step_lr_schedulers": cls.step_lr_schedulers,
            "get_batch": cls.get_batch,
            "initialize_dataloader": cls.initialize_dataloader,
        }
        probe = self

        def step_lr_schedulers(trainer, end_of_epoch=False):
            if not end_of_epoch:
                synchronize(probe.device)
                probe.marks.append(time.perf_counter())
            return probe.saved["step_lr_schedulers"](trainer, end_of_epoch)

        def get_batch(trainer):
            start = time.perf_counter()
            out = probe.saved["get_batch"](trainer)
            probe.loading.append(time.perf_counter() - start)
            return out

        def initialize_dataloader(trainer):
            probe.saved["initialize_dataloader"](trainer)
            probe.marks.append(time.perf_counter())

        cls.step_lr_schedulers = step_lr_schedulers
        cls.get_batch = get_batch
        cls.initialize_dataloader = initialize_dataloader

    def restore(self):
        for name, fn in self.saved.items():
            setattr(SOProxyTrainer, name, fn)


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
        run = training.Run(config)
        device = run.device
        batch = torch.stack([run.data.train[i][0] for i in range(config.batch_size)])
        batch = batch.to(device)
        labels = torch.arange(config.batch_size, device=device) % run.data.num_classes
        print(f"[{name}] bare loop warm-up ...", flush=True)
        bare_loop(run, batch, labels, 1, device)
        original_end = run.end_of_epoch
        epoch_end, bare, pipeline_steps, pipeline_loading = [], [], [], []

        def end_of_epoch(trainer):
            start = time.perf_counter()
            out = original_end(trainer)
            epoch_end.append(time.perf_counter() - start)
            return out

        run.end_of_epoch = end_of_epoch
        for r in range(args.rounds):  # alternate, so that machine load hits both
            print(f"[{name}] round {r + 1}: bare loop ({iterations}) ...", flush=True)
            bare += bare_loop(run, batch, labels, iterations, device)
            print(
                f"[{name}] round {r + 1}: pipeline ({iterations + 1} iterations) ...",
                flush=True,
            )
            probe = Probe(device)
            try:
                run.train()
            finally:
                probe.restore()
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
        "end_of_epoch_s": statistics.median(epoch_end) if epoch_end else None,
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
