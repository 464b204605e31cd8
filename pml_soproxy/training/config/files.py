"""The YAML layers: a config file read as ``{key: (value, "file, line N")}``, the
packaged per-dataset files and presets (``pml_soproxy/configs``)."""

from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import yaml

from .schema import ConfigError


def read_yaml(path: Path, label: Optional[str] = None) -> Dict[str, Tuple[Any, str]]:
    """A YAML mapping of config keys as ``{key: (value, "file, line N")}``.

    Syntax errors, duplicate keys and non-mapping documents name the file and line.
    """
    label = label or str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read config file {label}: {err}") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        values = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        hint = " (YAML does not allow tabs: indent with spaces)" if "\\t" in problem \
            or "\t" in problem else ""  # fmt: skip
        raise ConfigError(
            f"config file {label}{where}: invalid YAML: {problem}{hint}"
        ) from None
    if values is None:
        return {}
    if not isinstance(node, yaml.MappingNode) or not isinstance(values, dict):
        raise ConfigError(
            f"config file {label} must hold a mapping of config keys to values "
            f"(key: value lines), got a {type(values).__name__}"
        )
    out, lines = {}, {}
    for key_node, _ in node.value:
        key, line = key_node.value, key_node.start_mark.line + 1
        if key in lines:
            raise ConfigError(
                f"config file {label}: key '{key}' appears twice (lines {lines[key]} "
                f"and {line})"
            )
        lines[key] = line
    for key, value in values.items():
        out[str(key)] = (value, f"{label}, line {lines.get(str(key), '?')}")
    return out


def packaged_configs():
    return resources.files("pml_soproxy") / "configs"


def preset_names() -> List[str]:
    return sorted(p.name[:-5] for p in (packaged_configs() / "presets").iterdir()
                  if p.name.endswith(".yaml"))  # fmt: skip


def read_layer(name: str) -> Dict[str, Tuple[Any, str]]:
    """A preset name (``tiny-cpu``) or a YAML file path."""
    preset = packaged_configs() / "presets" / f"{name}.yaml"
    if preset.is_file():
        return read_yaml(preset, f"preset {name} ({preset})")
    if Path(name).is_file():
        return read_yaml(Path(name))
    raise ConfigError(
        f"--config {name!r} is neither a YAML file nor a preset "
        f"(presets: {', '.join(preset_names())})"
    )
