"""The command line: one flag per schema key, and the flags given as overrides."""

import typing
from typing import Any, Dict, List

import yaml

from .schema import DEPRECATED_KEYS, PRECISIONS, SCHEMA, flag_name
from .values import base_type


def _yaml_mapping(text: str):
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = None
    if not isinstance(value, dict):
        import argparse

        raise argparse.ArgumentTypeError(
            f"expected a YAML mapping such as '{{depth: 2}}', got {text!r}"
        )
    return value


def add_config_arguments(parser):
    """One flag per schema key (``--so-weight``, ``--random-init``, ...), all with
    default None so that only the flags given override the YAML layers."""
    import argparse

    for key, f in SCHEMA.items():
        if not f.metadata["flag"]:
            continue
        kind, _ = base_type(f.type)
        origin = typing.get_origin(kind) or kind
        kwargs: Dict[str, Any] = dict(help=f.metadata["help"], default=None)
        if f.metadata["metavar"]:
            kwargs["metavar"] = f.metadata["metavar"]
        if origin is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif origin is dict:
            kwargs["type"] = _yaml_mapping
        elif origin is list:
            kwargs.update(type=int, nargs="+")
        elif origin in (int, float):
            kwargs["type"] = origin
        if key in ("precision",):
            kwargs["choices"] = PRECISIONS
        parser.add_argument(flag_name(key), dest=key, **kwargs)
    parser.add_argument(
        "--checkpoint-path",
        dest="checkpoint_path",
        metavar="FILE",
        help="deprecated alias of --pretrained-weights",
    )


def overrides_from(args) -> Dict[str, Any]:
    """The schema keys given as flags (``None`` = not given)."""
    keys = [k for k, f in SCHEMA.items() if f.metadata["flag"]] + list(DEPRECATED_KEYS)
    return {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}


def flag_source(key: str) -> str:
    return f"flag {flag_name(key)}"


def commented_yaml(resolved) -> List[str]:
    """``--print-config``: a resolved config as YAML lines that ``--config`` reads
    back, each value's source (and what "auto" resolves to) as a comment."""
    import json

    from ..loading import describe_auto

    config = resolved.config
    notes = {"num_workers": describe_auto(config.num_workers, config.device)}
    lines = []
    for key, value in config.to_dict().items():
        if key != "dataset":
            note = f"; {notes[key]}" if key in notes else ""
            lines.append(f"{key}: {json.dumps(value)}  # {resolved.sources[key]}{note}")
    return lines
