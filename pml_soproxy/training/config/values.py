"""One value at a time: its type against the schema, its check, and the sentence of
an error (the key, the value, what is allowed and where the value came from)."""

import difflib
import typing
from typing import Any, Tuple

from .schema import DEPRECATED_KEYS, SCHEMA, AutoInt, ConfigError

DEFAULT = "the default"  # the source of a value no layer set


def _type_error(key, value, source, allowed):
    return ConfigError(
        f"config key '{key}' = {value!r} (from {source}) is not allowed: "
        f"expected {allowed}"
    )


def base_type(annotation) -> Tuple[Any, bool]:
    """``Optional[X]`` -> ``(X, True)``."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Union and type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return annotation, False


def _coerce(key: str, value: Any, source: str) -> Any:
    """Check ``value``'s type against the schema; returns the typed value."""
    f = SCHEMA[key]
    kind, optional = base_type(f.type)
    allowed = f.metadata["allowed"]
    if value is None:
        if optional:
            return None
        raise _type_error(key, value, source, allowed or kind.__name__)
    if kind == AutoInt:  # "auto", an integer, or a flag's digits
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool)):
            return value
        if isinstance(value, str) and value.isdigit():
            return int(value)
        raise _type_error(key, value, source, allowed or "auto or an integer")
    origin = typing.get_origin(kind) or kind
    if origin is bool:
        if isinstance(value, bool):
            return value
        raise _type_error(key, value, source, "true or false")
    if origin is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _type_error(key, value, source, allowed or "an integer")
    if origin is float:
        # PyYAML reads 1e-4 (no dot) as a string: accept numeric strings
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise _type_error(key, value, source, allowed or "a number")
    if origin is str:
        if isinstance(value, str) and value:
            return value
        raise _type_error(key, value, source, allowed or "a non-empty string")
    if origin is dict:
        if isinstance(value, dict) and all(isinstance(k, str) for k in value):
            return dict(value)
        raise _type_error(key, value, source, "a mapping of names to values")
    if origin is list:
        if isinstance(value, (list, tuple)) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            return list(value)
        raise _type_error(key, value, source, allowed or "a list of integers")
    raise TypeError(f"schema type {f.type} of {key} is not handled")  # a bug


def check_value(key: str, value: Any, source: str) -> Any:
    value = _coerce(key, value, source)
    check = SCHEMA[key].metadata["check"]
    if value is not None and check is not None and not check(value):
        raise _type_error(key, value, source, SCHEMA[key].metadata["allowed"])
    return value


def unknown_key_error(key: str, source: str) -> ConfigError:
    close = difflib.get_close_matches(key, list(SCHEMA) + list(DEPRECATED_KEYS), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return ConfigError(
        f"unknown config key '{key}' (from {source}){hint} Known keys: "
        f"{', '.join(SCHEMA)}"
    )
