"""``pml-soproxy sweep`` and ``pml-soproxy compare``: their arguments and commands
(cli.py registers them with :func:`add_sweep_parser` and :func:`add_compare_parser`).
"""

import argparse
import os
from typing import Any, Dict, List

import yaml

from ..training.config import ConfigError


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def _key_value(text: str):
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError:
        return key.strip(), value


def _add_arguments(group, arguments: Dict[str, Dict[str, Any]]) -> None:
    """``{flag or name: add_argument keywords}``, added to ``group`` in order."""
    for flag, keywords in arguments.items():
        group.add_argument(flag, **keywords)


def _plan_arguments() -> Dict[str, Dict[str, Any]]:
    from ..training.config import DATASET_NAMES, preset_names

    layers = ", ".join(preset_names())
    return {
        "sweep_dir": dict(metavar="SWEEP_DIR", help="the sweep's folder"),
        "--spec": dict(metavar="YAML", help="sweep spec: dataset, config (presets/YAML "
                       "files), overrides (fixed keys), grid (key: [values]), pair_by; "
                       "flags below add to it and win"),
        "--grid": dict(action="append", default=[], metavar="KEY=V1,V2",
                       help="a grid axis, e.g. so_weight=0,0.1,1 or seed=0,1,2 "
                       "(repeatable; any config key)"),
        "--pair-by": dict(metavar="KEY", help="the key whose value pairs runs across "
                          "the other axes (default: seed)"),
        "--dataset": dict(choices=DATASET_NAMES),
        "--config": dict(action="append", default=[], metavar="YAML_OR_PRESET",
                         help=f"config layer for every run ({layers} or a YAML file); "
                         "repeatable"),
        "--dry-run": dict(action="store_true", help="write the plan, list the runs "
                          "and their states, train nothing"),
    }  # fmt: skip


def _execution_arguments() -> Dict[str, Dict[str, Any]]:
    from .runner import EXECUTORS

    return {
        "--executor": dict(choices=EXECUTORS, default="processes",
                           help="processes: N worker processes here (default); local: "
                           "submitit's local executor; slurm: SLURM jobs through "
                           "submitit"),
        "--processes": dict(type=_positive, default=1, metavar="N",
                            help="runs at a time with --executor processes (default 1)"),
        "--threads-per-process": dict(type=_positive, metavar="N", help="torch threads "
                                      "of each process (default: the cores shared out)"),
        "--visible-devices": dict(metavar="0,1,...", help="GPUs for --executor "
                                  "processes: worker i sees only the i-th "
                                  "(CUDA_VISIBLE_DEVICES), round robin"),
    }  # fmt: skip


def _submitit_arguments() -> Dict[str, Dict[str, Any]]:
    return {
        "--runs-per-job": dict(type=_positive, default=1, metavar="N",
                               help="runs one job trains one after the other "
                               "(default 1)"),
        "--timeout-min": dict(type=_positive, default=24 * 60, metavar="MIN",
                              help="time limit of a job (default 1440); when it runs "
                              "out the job is requeued and resumes its runs"),
        "--partition": dict(metavar="NAME", help="SLURM partition"),
        "--gpus-per-node": dict(type=int, metavar="N", help="GPUs per job (pass 1 to "
                                "train on a GPU; none by default)"),
        "--cpus-per-task": dict(type=int, metavar="N"),
        "--mem-gb": dict(type=float, metavar="GB"),
        "--max-parallel": dict(type=_positive, metavar="N",
                               help="SLURM: jobs of the array running at once"),
        "--slurm": dict(action="append", default=[], type=_key_value,
                        metavar="KEY=VALUE", help="any other submitit SLURM parameter, "
                        "e.g. account=abc, qos=high, constraint=a100 (passed as "
                        "slurm_KEY); repeatable"),
    }  # fmt: skip


def add_sweep_parser(subparsers) -> argparse.ArgumentParser:
    from ..training.config import add_config_arguments

    parser = subparsers.add_parser(
        "sweep",
        help="a grid of paired runs (so_weight x seed x any config key), N at a time "
        "on this machine or as SLURM jobs; run it again to resume",
        description="Expand a grid into ordinary run folders SWEEP_DIR/runs/<key=value,"
        "...> (the plan: SWEEP_DIR/sweep.json) and train those not finished: finished "
        "runs are skipped, interrupted ones resumed from their last checkpoint. "
        "`pml-soproxy sweep SWEEP_DIR` alone resumes a sweep.",
    )
    _add_arguments(parser, _plan_arguments())
    execution = parser.add_argument_group("where the runs execute")
    _add_arguments(execution, _execution_arguments())
    cluster = parser.add_argument_group("submitit (--executor local or slurm)")
    _add_arguments(cluster, _submitit_arguments())
    fixed = parser.add_argument_group(
        "config values of every run (as for train; a grid axis cannot be one)"
    )
    add_config_arguments(fixed)
    parser.set_defaults(func=cmd_sweep)
    return parser


def submitit_parameters(args) -> Dict[str, Any]:
    from .cluster import executor_parameters

    options = {
        "timeout_min": args.timeout_min,
        "gpus_per_node": args.gpus_per_node,
        "cpus_per_task": args.cpus_per_task,
        "mem_gb": args.mem_gb,
    }
    slurm = dict(args.slurm)
    if args.partition:
        slurm["partition"] = args.partition
    if args.max_parallel:
        slurm["array_parallelism"] = args.max_parallel
    return executor_parameters(args.executor, options, slurm)


def cmd_sweep(args) -> int:
    from ..training.config import flag_source, overrides_from
    from .plan import plan_path, read_plan, spec_from_plan
    from .runner import describe_states, prepare_plan, run_states, run_sweep
    from .spec import build_spec

    base = None
    if (
        args.spec is None
        and not args.grid
        and os.path.isfile(plan_path(args.sweep_dir))
    ):
        base = spec_from_plan(args.sweep_dir, read_plan(args.sweep_dir))
    spec = build_spec(args.spec, args.dataset, args.config, overrides_from(args),
                      args.grid, args.pair_by, flag_source, base=base)  # fmt: skip
    plan = prepare_plan(args.sweep_dir, spec)
    if args.dry_run:
        states = run_states(args.sweep_dir, plan)
        for name, state in states.items():
            print(f"{state:>10}  {name}")
        print(f"{describe_states(states)}; plan: {plan_path(args.sweep_dir)}")
        return 0
    if args.executor != "processes" and args.visible_devices:
        raise ConfigError("--visible-devices is for --executor processes; submitit "
                          "jobs get theirs from --gpus-per-node")  # fmt: skip
    devices = args.visible_devices.split(",") if args.visible_devices else None
    parameters = submitit_parameters(args) if args.executor != "processes" else None
    run_sweep(args.sweep_dir, plan, executor=args.executor, processes=args.processes,
              threads=args.threads_per_process, visible_devices=devices,
              runs_per_job=args.runs_per_job, parameters=parameters)  # fmt: skip
    return 0


def add_compare_parser(subparsers) -> argparse.ArgumentParser:
    from .compare import DEFAULT_AXIS

    parser = subparsers.add_parser(
        "compare",
        help="the paired table of a sweep: mean ± std per value, paired differences "
        "against so_weight 0 with t-values, the value validation selects; a figure",
    )
    _add_arguments(parser, {
        "sweep_dir": dict(metavar="SWEEP_DIR"),
        "--axis": dict(default=DEFAULT_AXIS,
                       help=f"the grid axis compared (default {DEFAULT_AXIS})"),
        "--baseline": dict(type=yaml.safe_load, metavar="VALUE", help="the axis value "
                           "differences are taken against (default 0 if the axis has "
                           "it, else its first value)"),
        "--pair-by": dict(metavar="KEY", help="default: the sweep's (seed)"),
        "--metric": dict(metavar="NAME", help="the metric that selects on validation "
                         "and is plotted (default: the runs' selection_metric)"),
        "--output-dir": dict(metavar="DIR", help="where compare.json, compare.md, "
                             "compare.png go (default SWEEP_DIR)"),
        "--no-figure": dict(action="store_true"),
    })  # fmt: skip
    parser.set_defaults(func=cmd_compare)
    return parser


def cmd_compare(args) -> int:
    from .compare import compare_sweep, format_comparison, write_comparison

    comparison = compare_sweep(args.sweep_dir, axis=args.axis, baseline=args.baseline,
                               pair_by=args.pair_by, metric=args.metric)  # fmt: skip
    print(format_comparison(comparison))
    paths: List[str] = write_comparison(comparison, args.output_dir or args.sweep_dir,
                                        figure=not args.no_figure)  # fmt: skip
    for path in paths:
        print(f"written: {path}")
    return 0
