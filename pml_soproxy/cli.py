"""``pml-soproxy``: parses the command line and dispatches; nothing else.

Every expected failure (a bad config value, file, image or checkpoint) is printed as
one line ``pml-soproxy: error: ...`` with exit status 2; Ctrl-C / SIGTERM during
training print how to resume and exit with 130.
"""

import argparse
import logging
import os
import sys
import warnings
from typing import List, Optional

from . import __version__

EXIT_ERROR, EXIT_INTERRUPTED = 2, 130


def add_run_arguments(parser: argparse.ArgumentParser, dataset_default: str):
    from .training.config import DATASET_NAMES, add_config_arguments, preset_names

    parser.add_argument("--dataset", choices=DATASET_NAMES, default=dataset_default)
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="YAML_OR_PRESET",
        help="extra YAML config file or preset name "
        f"({', '.join(preset_names())}), layered over the dataset's defaults; "
        "repeatable; flags still win",
    )
    add_config_arguments(parser)
    parser.add_argument(
        "--resume", action="store_true",
        help="continue the run in --output-dir from its last checkpoint",
    )  # fmt: skip
    parser.add_argument(
        "--overwrite", action="store_true",
        help="replace the run already in --output-dir",
    )  # fmt: skip
    parser.add_argument(
        "--print-config", action="store_true",
        help="print the resolved config, with where each value came from, and exit",
    )  # fmt: skip


def resolved_config(args, **replace):
    from .training.config import flag_source, overrides_from, resolve_config

    overrides = dict(overrides_from(args), **replace)
    resolved = resolve_config(args.dataset, overrides, args.config, flag_source)
    for message in resolved.warnings:
        print(f"pml-soproxy: warning: {message}", file=sys.stderr)
    return resolved


def print_config(resolved) -> int:
    """The resolved config as YAML that --config reads back, sources as comments."""
    from .training.config import commented_yaml

    print("\n".join(commented_yaml(resolved)))
    return 0


def cmd_train(args) -> int:
    from .report import results_summary
    from .training import train

    resolved = resolved_config(args)
    if args.print_config:
        return print_config(resolved)
    results = train(resolved.config, resume=args.resume, overwrite=args.overwrite)
    if results is None:  # a non-zero rank under torchrun: rank 0 reports
        return 0
    print(f"\n{results_summary(results)}")
    print(f"results: {os.path.join(resolved.config.output_dir, 'results.json')}")
    return 0


def cmd_evaluate(args) -> int:
    from .report import results_summary
    from .training.evaluate import (
        default_evaluation_path,
        evaluate_run,
        write_evaluation,
    )

    results = evaluate_run(
        args.checkpoint, data_root=args.data_root, device=args.device
    )
    print(results_summary(results))  # before any file is written
    output = args.output or default_evaluation_path(args.checkpoint)
    try:
        write_evaluation(results, output)
    except OSError as err:
        raise OSError(
            f"the metrics above could not be written to {output} ({err.strerror}); "
            "pass --output FILE to write them elsewhere"
        ) from None
    print(f"evaluation: {output}")
    return 0


def cmd_demo(args) -> int:
    from .training.config import flag_source, overrides_from
    from .training.demo import DEMO_SO_WEIGHT, run_demo

    if args.print_config:
        return print_config(resolved_config(args))
    overrides = overrides_from(args)
    overrides.pop("output_dir", None)
    run_demo(args.dataset, overrides, args.config, args.output_dir or "runs/demo",
             args.so_weight if args.so_weight is not None else DEMO_SO_WEIGHT,
             resume=args.resume, overwrite=args.overwrite,
             flag_source=flag_source)  # fmt: skip
    return 0


def cmd_benchmark(args) -> int:
    """powerful-benchmarker with our parts; every argument is passed through."""
    from .benchmarker import main as benchmark_main

    benchmark_main(args.benchmark_args, prog="pml-soproxy benchmark")
    return 0


def run_benchmark(benchmark_args: List[str]) -> int:
    """``pml-soproxy benchmark ...``: straight to the launcher, which parses its own
    flags (building the other subcommands' parsers and the torchrun check would
    import torch, so ``benchmark --help`` would take seconds)."""
    try:
        return cmd_benchmark(argparse.Namespace(benchmark_args=benchmark_args))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except (ValueError, OSError, RuntimeError) as err:
        print(f"pml-soproxy: error: {one_line(err)}", file=sys.stderr)
        return EXIT_ERROR


class Parser(argparse.ArgumentParser):
    """argparse, suggesting the closest flag for a mistyped one."""

    def error(self, message):
        if message.startswith("unrecognized arguments:"):
            import difflib

            known = [s for a in self._actions for s in a.option_strings]
            for sub in self._subparsers._group_actions if self._subparsers else ():
                for p in getattr(sub, "choices", {}).values():
                    known += [s for a in p._actions for s in a.option_strings]
            for word in message.split(":", 1)[1].split():
                close = difflib.get_close_matches(word.split("=")[0], known, n=1)
                if word.startswith("--") and close:
                    message += f" (did you mean {close[0]}?)"
                    break
        super().error(message)


def add_recipe_parsers(sub: argparse._SubParsersAction):
    """``train``, ``evaluate`` and ``demo``: the native recipe's doors."""
    train = sub.add_parser(
        "train",
        help="train on a dataset, keep the epoch chosen on validation classes, "
        "then evaluate the test split once",
    )
    add_run_arguments(train, dataset_default="cub200")
    train.set_defaults(func=cmd_train)

    evaluate = sub.add_parser(
        "evaluate", help="re-run the test evaluation of a saved run"
    )
    evaluate.add_argument(
        "--checkpoint",
        required=True,
        metavar="RUN",
        help="a run folder (its validation-selected weights), its "
        "weights_best.safetensors or its checkpoint_latest.pt",
    )
    evaluate.add_argument(
        "--data-root", help="override the dataset location stored in the run"
    )
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument(
        "--output", metavar="FILE",
        help="where to write the metrics (default: evaluation.json in the run folder)",
    )  # fmt: skip
    evaluate.set_defaults(func=cmd_evaluate)

    demo = sub.add_parser(
        "demo", help="Proxy Anchor with and without SO, same seed, side by side"
    )
    add_run_arguments(demo, dataset_default="digits")
    demo.set_defaults(func=cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="pml-soproxy", description="Soft Orthogonal Proxies for metric learning"
    )
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)
    add_recipe_parsers(sub)  # train, evaluate, demo

    from .retrieval.commands import add_parsers as add_retrieval_parsers

    add_retrieval_parsers(sub)  # embed, index, search, export

    from .sweeps.commands import add_compare_parser, add_sweep_parser

    add_sweep_parser(sub), add_compare_parser(sub)  # grids of paired runs

    benchmark = sub.add_parser(
        "benchmark",
        help="powerful-benchmarker (MLRC protocol) with our loss; see the README",
        add_help=False,
        prefix_chars="+",  # every argument, --help included, goes to the launcher
    )
    benchmark.add_argument("benchmark_args", nargs=argparse.REMAINDER)
    benchmark.set_defaults(func=cmd_benchmark)
    return parser


def one_line(err: BaseException) -> str:
    """The sentence of an expected error. An exception re-raised from a DataLoader
    worker carries the worker's whole traceback in its message: keep its last line,
    the original message."""
    lines = str(err).strip().splitlines()
    if not lines:
        return type(err).__name__
    if not any(line.startswith("Original Traceback") for line in lines):
        return lines[0]
    # the traceback's last line: "package.module.ErrorClass: message"
    name, _, message = lines[-1].partition(": ")
    return message if message and name.endswith(type(err).__name__) else lines[-1]


def expected_errors():
    from .datasets import DatasetFormatError, ImageLoadError
    from .training import CheckpointError, ConfigError, NonFiniteLossError

    return (ConfigError, CheckpointError, NonFiniteLossError, DatasetFormatError,
            ImageLoadError, ValueError, OSError, RuntimeError)  # fmt: skip


def main(argv: Optional[List[str]] = None) -> int:
    # PML logs at INFO/WARNING for things that are expected here (no embedder
    # optimizer when the trunk feature is the embedding; its progress bar formats a
    # tensor that requires grad).
    logging.getLogger("PML").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad")
    logging.basicConfig(
        level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["benchmark"]:
        return run_benchmark(argv[1:])
    args = build_parser().parse_args(argv)
    rank = os.environ.get("RANK", "0")
    func = args.func
    from .distributed import launched_by_torchrun

    if launched_by_torchrun():
        # under torchrun: an unexpected error's traceback reaches torchrun's summary
        from torch.distributed.elastic.multiprocessing.errors import record

        func = record(func)
    try:
        return func(args)
    except KeyboardInterrupt:
        if args.command in ("train", "demo") and rank == "0":
            from .training.run_folder import interrupted_message

            folder = getattr(args, "output_dir", None) or "the run folder"
            print(f"\n{interrupted_message(folder)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except expected_errors() as err:
        return report_error(err, args.command, rank)


def report_error(err: BaseException, command: str, rank: str) -> int:
    """One line ``pml-soproxy: error: ...`` (rank 0 alone for a config error)."""
    from .datasets import ImageLoadError
    from .training import ConfigError

    if rank != "0" and isinstance(err, ConfigError):
        return EXIT_ERROR  # every rank has the same config: rank 0 says it
    where = "" if rank == "0" else f"[rank {rank}] "
    message = one_line(err)
    if isinstance(err, ImageLoadError) and command in ("train", "demo"):
        if "max_image_pixels" not in message:
            message += (
                " (pass --skip-bad-images to replace unreadable training images "
                "by others of their class and list them in the run folder)"
            )
    err.__traceback__ = None  # frees DataLoader workers held by the traceback
    print(f"pml-soproxy: error: {where}{message}", file=sys.stderr)
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
