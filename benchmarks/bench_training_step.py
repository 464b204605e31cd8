"""Cost of soft orthogonality (SO) in a training step, measured part by part.

In one run, on the same device and threads, times the forward+backward of
  trunk     the DeiT-S trunk (timm deit_small_distilled_patch16_224, random init,
            224 px) on a batch of --batch-size images, gradient of random size
  pa        Proxy Anchor loss alone (SoftOrthogonalProxyAnchorLoss, so_weight=0)
            on the batch's 384-d embeddings, for C = 100 (CUB) and 11,318 (SOP)
  so        the SO regulariser alone on the C x 384 proxies
  pa+so     the full loss (so_weight=1) as training uses it
and reports SO's share of a step: (pa+so - pa) / (trunk + pa), next to so / (trunk + pa).
The trunk step takes tens of seconds on a CPU, so it is repeated only --trunk-repeats
times (after one warm-up); the loss parts, milliseconds, --loss-repeats times after
each trunk repeat (interleaved, so that machine load hits every part alike).

    python benchmarks/bench_training_step.py                    # CPU, 2 threads
    python benchmarks/bench_training_step.py --device cuda --trunk-repeats 20
"""

import argparse
import statistics
import time

import torch
from benchutil import meta, synchronize, table, write_json

from pml_soproxy import SoftOrthogonalityRegularizer, SoftOrthogonalProxyAnchorLoss
from pml_soproxy.trunks import create_trunk

TARGETS = {100: 0.01, 11318: 0.02}  # issue 6: at most 1% (CUB), 2% (SOP)


def timed(fn, device):
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default="deit_small_distilled_patch16_224")
    parser.add_argument("--batch-size", type=int, default=120)
    parser.add_argument("--classes", default="100,11318")
    parser.add_argument("--trunk-repeats", type=int, default=3)
    parser.add_argument("--loss-repeats", type=int, default=10)
    parser.add_argument("--output", default="benchmarks/results/training_step.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)

    trunk = create_trunk(args.model, pretrained=False).to(device).train()
    dims = trunk.output_size
    images = torch.randn(args.batch_size, 3, 224, 224, device=device)
    grad = torch.randn(args.batch_size, dims, device=device)
    embeddings = torch.randn(args.batch_size, dims, device=device, requires_grad=True)

    def trunk_step():
        trunk.zero_grad(set_to_none=True)
        trunk(images).backward(grad)

    parts = {}
    for c in (int(x) for x in args.classes.split(",")):
        labels = torch.randint(c, (args.batch_size,), device=device)
        pa = SoftOrthogonalProxyAnchorLoss(c, dims, so_weight=0).to(device)
        full = SoftOrthogonalProxyAnchorLoss(c, dims, so_weight=1.0).to(device)
        full.load_state_dict(pa.state_dict())
        regulariser = SoftOrthogonalityRegularizer()

        def loss_step(loss, labels=labels):
            def step():
                loss.zero_grad(set_to_none=True)
                embeddings.grad = None
                loss(embeddings, labels).backward()

            return step

        def so_step(loss=full, regulariser=regulariser):
            loss.zero_grad(set_to_none=True)
            regulariser(loss.proxies).backward()

        parts[f"pa@{c}"] = loss_step(pa)
        parts[f"so@{c}"] = so_step
        parts[f"pa+so@{c}"] = loss_step(full)

    times = {"trunk": []}
    times.update({name: [] for name in parts})
    for name, step in parts.items():  # warm-up
        step()
    print(f"trunk warm-up ({args.model}, batch {args.batch_size}) ...", flush=True)
    warm = timed(trunk_step, device)
    print(f"  {warm:.1f} s", flush=True)
    for r in range(args.trunk_repeats):
        times["trunk"].append(timed(trunk_step, device))
        for name, step in parts.items():
            times[name].extend(timed(step, device) for _ in range(args.loss_repeats))
        print(f"repeat {r + 1}: trunk {times['trunk'][-1]:.2f} s", flush=True)

    median = {k: statistics.median(v) for k, v in times.items()}
    rows, results = [], []
    for c in (int(x) for x in args.classes.split(",")):
        step = median["trunk"] + median[f"pa@{c}"]
        added = (median[f"pa+so@{c}"] - median[f"pa@{c}"]) / step
        alone = median[f"so@{c}"] / step
        target = TARGETS.get(c)
        results.append(
            {
                "classes": c,
                "dims": dims,
                "trunk_s": median["trunk"],
                "pa_s": median[f"pa@{c}"],
                "so_s": median[f"so@{c}"],
                "pa_plus_so_s": median[f"pa+so@{c}"],
                "so_added_share": added,
                "so_alone_share": alone,
                "target_share": target,
                "met": None if target is None else bool(max(added, alone) <= target),
            }
        )
        rows.append(
            [
                f"{c} x {dims}",
                f"{median['trunk']:.2f}",
                f"{1e3 * median[f'pa@{c}']:.2f}",
                f"{1e3 * median[f'so@{c}']:.2f}",
                f"{1e3 * median[f'pa+so@{c}']:.2f}",
                f"{100 * added:.3f}%",
                f"{100 * alone:.3f}%",
                "-" if target is None else f"{100 * target:g}%",
            ]
        )
    print(
        f"\nforward+backward medians, {args.device}, {torch.get_num_threads()} threads, "
        f"batch {args.batch_size}, trunk repeats {args.trunk_repeats}, loss repeats "
        f"{args.trunk_repeats * args.loss_repeats}"
    )
    print(
        table(
            [
                "C x D",
                "trunk s",
                "PA ms",
                "SO ms",
                "PA+SO ms",
                "SO added / step",
                "SO alone / step",
                "target",
            ],
            rows,
        )
    )
    write_json(
        args.output,
        {
            "meta": meta(
                args,
                model=args.model,
                batch_size=args.batch_size,
                trunk_repeats=args.trunk_repeats,
                loss_repeats_per_trunk_repeat=args.loss_repeats,
                trunk_warmup_s=warm,
            ),
            "rows": results,
            "times_s": times,
        },
    )


if __name__ == "__main__":
    main()
