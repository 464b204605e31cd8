"""The one config schema of the native recipe.

``TrainConfig`` is the single source of every key, its default, its type, what it
accepts and its help text. The YAML files under ``pml_soproxy/configs`` only override
keys for one dataset or preset; the command-line flags are generated from the schema
(:func:`add_config_arguments`). Every value is checked before any work starts, and an
error names the key, the value, what is allowed and where the value came from (the
default, a flag, or a YAML file and line).

schema.py   ``TrainConfig``: every key, its default, check, allowed sentence, help
values.py   one value: its type, its check, the error sentence; unknown keys
files.py    YAML files (with line numbers), the packaged dataset files and presets
layers.py   defaults < dataset YAML < --config layers < flags; cross-key checks
flags.py    the argparse flags generated from the schema, the overrides given, and
            --print-config's commented YAML
"""

from .files import packaged_configs, preset_names, read_layer, read_yaml
from .flags import add_config_arguments, commented_yaml, flag_source, overrides_from
from .layers import (
    ResolvedConfig,
    check_combinations,
    config_from_dict,
    load_config,
    recall_at,
    resolve_config,
)
from .schema import (
    DATASET_NAMES,
    DEPRECATED_KEYS,
    LOSS_NAMES,
    LOSS_OPTIONS,
    PRECISIONS,
    SCHEMA,
    AutoInt,
    ConfigError,
    TrainConfig,
    choice,
    default_value,
    flag_name,
    option,
)
from .values import DEFAULT, check_value, unknown_key_error
