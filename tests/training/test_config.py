"""One schema: every value checked before any work, with its source in the error."""

import argparse

import pytest

from pml_soproxy import cli
from pml_soproxy.training import config as schema
from pml_soproxy.training.config import ConfigError, load_config, resolve_config

BAD_VALUES = {
    "epochs": [0, -2, 2.5, "ten", True],
    "batch_size": [0, -1, 1.5],
    "samples_per_class": [0, -4],
    "embedding_size": [-8, 1.5, "big"],
    "iterations_per_epoch": [0, -1],
    "lr": [0, -1e-4, float("inf"), float("nan"), "fast"],
    "proxy_lr_multiplier": [0, -1],
    "so_weight": [-1, float("nan")],
    "alpha": [0, -32],
    "val_fraction": [1, 1.5, -0.1],
    "num_workers": [-1, 0.5],
    "seed": [-1, 2**32],
    "precision": ["fp8"],
    "device": ["gpu0", ""],
    "recall_at": [[], [0, 1], "1,2"],
    "random_init": ["yes", 1],
    "trunk_kwargs": [[1, 2], "depth=2"],
    "max_image_pixels": [0, -5],
    "log_every": [0],
}


@pytest.mark.parametrize(
    "key, value", [(k, v) for k, values in BAD_VALUES.items() for v in values]
)
def test_every_bad_value_is_one_sentence_naming_key_value_and_source(key, value):
    with pytest.raises(ConfigError) as info:
        resolve_config("digits", {key: value}, flag_source=lambda k: f"flag --{k}")
    message = str(info.value)
    assert f"'{key}'" in message and f"flag --{key}" in message
    assert "\n" not in message


def test_every_schema_key_has_help_and_a_flag():
    parser = argparse.ArgumentParser()
    schema.add_config_arguments(parser)
    flags = {a.dest for a in parser._actions}
    for key, f in schema.SCHEMA.items():
        assert f.metadata["help"], key
        if f.metadata["flag"]:
            assert key in flags, key


def test_yaml_values_name_file_and_line(tmp_path):
    extra = tmp_path / "mine.yaml"
    extra.write_text("so_weight: 0.5\n\nepochs: ten\n")
    with pytest.raises(
        ConfigError, match=r"'epochs' = 'ten' \(from .*mine.yaml, line 3\)"
    ):
        load_config("digits", extra_configs=[str(extra)])


@pytest.mark.parametrize(
    "text, expected",
    [
        ("epochs: 3\n\tlr: 1\n", r"line 2.*tabs"),
        ("epochs: [3\n", r"line \d+, column \d+: invalid YAML"),
        ("epochs: 3\nepochs: 4\n", r"'epochs' appears twice \(lines 1 and 2\)"),
        ("- epochs\n- 3\n", r"must hold a mapping"),
        ("so_wieght: 1\n", r"unknown config key 'so_wieght'.*did you mean 'so_weight'"),
        ("dataset: cub200\n", r"'dataset' cannot be set in a config file"),
        ("epochs: null\n", r"'epochs' = None .*line 1.*an integer >= 1"),
    ],
)
def test_malformed_yaml_is_one_sentence_with_file_and_line(tmp_path, text, expected):
    extra = tmp_path / "bad.yaml"
    extra.write_text(text)
    with pytest.raises(ConfigError, match=expected) as info:
        load_config("digits", extra_configs=[str(extra)])
    assert str(extra) in str(info.value)


def test_layers_defaults_dataset_file_preset_and_flags(tmp_path):
    resolved = resolve_config("digits", {"so_weight": 0.25})
    c = resolved.config
    assert c.model_name == "deit_tiny_patch16_224"  # digits.yaml
    assert c.margin == 0.1 and str(resolved.sources["margin"]) == "the default"
    assert c.so_weight == 0.25
    assert "digits.yaml" in str(resolved.sources["model_name"])
    assert str(resolved.sources["model_name"]).endswith("line 3")
    assert load_config("digits", extra_configs=["tiny-cpu"]).trunk_kwargs["depth"] == 4
    # PyYAML reads 1e-4 (no dot) as a string: a float key accepts it
    extra = tmp_path / "lr.yaml"
    extra.write_text("lr: 1e-4\n")
    assert load_config("digits", extra_configs=[str(extra)]).lr == 1e-4


def test_combinations_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="multiple of samples_per_class"):
        load_config("digits", {"batch_size": 50, "samples_per_class": 20})
    with pytest.raises(ConfigError, match="did you mean 'precision_at_1'"):
        load_config("digits", {"selection_metric": "precision_at1"})
    with pytest.raises(ConfigError, match="no file at"):
        load_config("digits", {"pretrained_weights": str(tmp_path / "none.pth"),
                               "random_init": False})  # fmt: skip
    with pytest.raises(ConfigError, match="exclude each other"):
        (tmp_path / "w.pth").write_bytes(b"x")
        load_config("digits", {"pretrained_weights": str(tmp_path / "w.pth")})


def test_data_dependent_checks_come_before_the_model(tmp_path, capsys):
    code = cli.main(["train", "--dataset", "digits", "--output-dir", str(tmp_path / "r"),
                     "--batch-size", "120", "--samples-per-class", "4"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "needs 30 classes per batch" in err and "held out for validation" in err
    assert not (tmp_path / "r").exists()  # nothing was started


def test_deprecated_checkpoint_path_is_an_alias_with_a_warning(tmp_path, capsys):
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"x")
    parser = cli.build_parser()
    args = parser.parse_args(["train", "--dataset", "digits", "--no-random-init",
                              "--checkpoint-path", str(weights)])  # fmt: skip
    resolved = cli.resolved_config(args)
    assert resolved.config.pretrained_weights == str(weights)
    assert "deprecated" in capsys.readouterr().err


def test_flags_print_the_resolved_config_with_sources(capsys):
    assert cli.main(["train", "--dataset", "digits", "--epochs", "7",
                     "--print-config"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "epochs: 7  # flag --epochs" in out
    assert "num_workers: 0  # digits.yaml" in out


def test_mistyped_flag_suggests_the_closest(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--so-wieght", "1"])
    assert "did you mean --so-weight?" in capsys.readouterr().err
