"""``pml-soproxy``: train, evaluate, demo."""

import argparse
import json
import logging
import os
import sys
import warnings
from typing import Dict, List, Optional

from torch.distributed.elastic.multiprocessing.errors import record

from . import __version__

DATASETS = ("cub200", "cars196", "sop", "inshop", "folder", "digits")


def add_train_arguments(parser: argparse.ArgumentParser, dataset_default: str):
    add = parser.add_argument
    add("--dataset", choices=DATASETS, default=dataset_default)
    add(
        "--config",
        action="append",
        default=[],
        help="extra YAML config file or preset name (tiny-cpu), layered over the "
        "dataset defaults; repeatable; flags still win",
    )
    add("--data-root", help="dataset folder (or its parent); not needed for digits")
    add(
        "--output-dir",
        help="where checkpoints, logs, results.json go (default runs/<dataset>)",
    )
    add(
        "--model-name",
        help="timm model name (default deit_small_distilled_patch16_224)",
    )
    add(
        "--checkpoint-path",
        help="pretrained trunk weights, a local .pth/.safetensors file",
    )
    add("--embedding-size", type=int, help="linear embedder size; 0 = trunk feature")
    add(
        "--so-weight",
        type=float,
        help="weight of the soft-orthogonality term (0 = plain Proxy Anchor)",
    )
    add("--epochs", type=int)
    add("--batch-size", type=int)
    add("--samples-per-class", type=int)
    add("--iterations-per-epoch", type=int)
    add("--lr", type=float)
    add("--proxy-lr-multiplier", type=float)
    add("--warmup-epochs", type=int)
    add(
        "--val-fraction",
        type=float,
        help="share of training classes held out for model selection",
    )
    add("--num-workers", type=int)
    add("--device", help="auto, cpu, cuda, cuda:1 ...")
    add("--precision", choices=("auto", "fp32", "bf16", "fp16"))
    add("--seed", type=int)


def overrides_from(args: argparse.Namespace) -> Dict:
    keys = [
        "data_root", "output_dir", "model_name", "checkpoint_path", "embedding_size",
        "so_weight", "epochs", "batch_size", "samples_per_class", "iterations_per_epoch",
        "lr", "proxy_lr_multiplier", "warmup_epochs", "val_fraction", "num_workers",
        "device", "precision", "seed",
    ]  # fmt: skip
    return {k: getattr(args, k) for k in keys}


def print_results(results: Dict):
    from .evaluation import format_accuracies

    print(
        f"\n{results['dataset']} test split, weights of {results['selected']}, "
        f"trunk {results['model_name']} ({results['pretrained_weights'] or 'random init'})"
    )
    print(format_accuracies(results["test"]))


def cmd_train(args) -> int:
    from .training import load_config, train

    config = load_config(args.dataset, overrides_from(args), args.config)
    try:
        results = train(config, resume=args.resume)
    except KeyboardInterrupt:
        print(
            f"\nInterrupted. Every completed epoch is checkpointed in {config.output_dir}; "
            "continue with the same command plus --resume.",
            file=sys.stderr,
        )
        return 130
    if results is None:  # a non-zero rank under torchrun: rank 0 reports
        return 0
    print_results(results)
    print(f"results: {os.path.join(config.output_dir, 'results.json')}")
    return 0


def cmd_evaluate(args) -> int:
    from .training import evaluate_checkpoint

    results = evaluate_checkpoint(
        args.checkpoint, data_root=args.data_root, device=args.device
    )
    print_results(results)
    return 0


def side_by_side(tables: Dict[str, Dict[str, float]]) -> str:
    names = list(tables)
    metrics = [
        m for m in next(iter(tables.values())) if isinstance(tables[names[0]][m], float)
    ]
    metrics.sort(
        key=lambda m: (
            not m.startswith("recall_at_"),
            int(m.rsplit("_", 1)[1]) if m.startswith("recall_at_") else 0,
            m,
        )
    )
    width = max(len(m) for m in metrics)
    lines = [f"{'metric':<{width}}  " + "  ".join(f"{n:>14}" for n in names)]
    for m in metrics:
        lines.append(
            f"{m:<{width}}  "
            + "  ".join(f"{100 * tables[n][m]:>13.2f}%" for n in names)
        )
    return "\n".join(lines)


def cmd_demo(args) -> int:
    from .figures import write_run_figures
    from .training import load_config, train

    runs = {}
    for name, so_weight in (("proxy_anchor", 0.0), ("proxy_anchor+SO", args.so_weight)):
        overrides = overrides_from(args)
        overrides.update(
            so_weight=so_weight,
            output_dir=os.path.join(args.output_dir, name.replace("+", "_")),
        )
        config = load_config(args.dataset, overrides, args.config)
        print(
            f"== {name}: {config.dataset}, so_weight={so_weight}, {config.epochs} epochs, "
            f"{config.model_name} ({config.checkpoint_path or 'random init'}), seed {config.seed}"
        )
        runs[name] = train(config, resume=args.resume)
    print("\nTest split, weights selected on the validation classes:")
    print(side_by_side({n: r["test"] for n, r in runs.items()}))
    for name, results in runs.items():
        init, final = results["proxy_cosines_init"], results["proxy_cosines_final"]
        print(
            f"{name}: proxy mean|cos| {init['mean_abs_cos']:.3f} -> {final['mean_abs_cos']:.3f}, "
            f"max|cos| {init['max_abs_cos']:.3f} -> {final['max_abs_cos']:.3f}, selected {results['selected']}"
        )
    for path in write_run_figures(runs, args.output_dir):
        print(f"figure: {path}")
    with open(os.path.join(args.output_dir, "demo.json"), "w") as f:
        json.dump(
            {
                n: {"test": r["test"], "selected": r["selected"]}
                for n, r in runs.items()
            },
            f,
            indent=1,
        )
    return 0


def cmd_benchmark(args) -> int:
    """powerful-benchmarker with our parts; every argument is passed through."""
    from .benchmarker import main as benchmark_main

    benchmark_main(args.benchmark_args, prog="pml-soproxy benchmark")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pml-soproxy", description="Soft Orthogonal Proxies for metric learning"
    )
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser(
        "train",
        help="train on a dataset, keep the epoch chosen on validation classes, "
        "then evaluate the test split once",
    )
    add_train_arguments(train, dataset_default="cub200")
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue from the last checkpoint in --output-dir",
    )
    train.set_defaults(func=cmd_train)

    evaluate = sub.add_parser(
        "evaluate", help="re-run the test evaluation of a saved model"
    )
    evaluate.add_argument(
        "--checkpoint",
        required=True,
        help="a run's checkpoint: weights_best.pth (validation-chosen) or "
        "checkpoint_latest.pth",
    )
    evaluate.add_argument(
        "--data-root", help="override the dataset location stored in the checkpoint"
    )
    evaluate.add_argument("--device", default="auto")
    evaluate.set_defaults(func=cmd_evaluate)

    demo = sub.add_parser(
        "demo", help="Proxy Anchor with and without SO, same seed, side by side"
    )
    add_train_arguments(demo, dataset_default="digits")
    demo.set_defaults(output_dir="runs/demo", so_weight=1.0)
    demo.add_argument("--resume", action="store_true")
    demo.set_defaults(func=cmd_demo)

    benchmark = sub.add_parser(
        "benchmark",
        help="powerful-benchmarker (MLRC protocol) with our loss; see the README",
        add_help=False,
        prefix_chars="+",  # every argument, --help included, goes to the launcher
    )
    benchmark.add_argument("benchmark_args", nargs=argparse.REMAINDER)
    benchmark.set_defaults(func=cmd_benchmark)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # under torchrun: a failing rank's traceback reaches torchrun's error summary
        return record(run)(argv)
    return run(argv)


def run(argv: Optional[List[str]] = None) -> int:
    # PML logs at INFO/WARNING for things that are expected here (no embedder
    # optimizer when the trunk feature is the embedding; its progress bar formats a
    # tensor that requires grad).
    logging.getLogger("PML").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad")
    logging.basicConfig(
        level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError, RuntimeError) as err:
        print(f"pml-soproxy: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
