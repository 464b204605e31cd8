"""The grid spec, its expansion into run configs, the plan file and run states."""

import json
import os

import pytest

from pml_soproxy import cli
from pml_soproxy.sweeps import plan as plans
from pml_soproxy.sweeps import spec as specs
from pml_soproxy.sweeps.runner import prepare_plan
from pml_soproxy.training.config import ConfigError

from .helpers import FIXED, THIRD_AXIS, THIRD_KEY, THIRD_VALUES


def grid_spec(**kwargs):
    values = dict(dataset="digits", overrides=FIXED,
                  grid=["so_weight=0,1", "seed=0,1", THIRD_AXIS])  # fmt: skip
    values.update(kwargs)
    return specs.build_spec(**values)


def test_grid_arguments_are_read_as_yaml_values():
    assert specs.parse_grid_argument("so_weight=0,0.5,1e-3") == (
        "so_weight", [0, 0.5, "1e-3"])  # fmt: skip
    assert specs.parse_grid_argument("loss=proxy_anchor, arcface") == (
        "loss", ["proxy_anchor", "arcface"])  # fmt: skip
    assert specs.parse_grid_argument("patience=null,2") == ("patience", [None, 2])
    assert specs.parse_grid_argument("recall_at=[[1, 2], [1, 4]]") == (
        "recall_at", [[1, 2], [1, 4]])  # fmt: skip
    for bad in ("so_weight", "so_weight=", "=0,1", "recall_at=[1, 2"):
        with pytest.raises(ConfigError, match="--grid"):
            specs.parse_grid_argument(bad)


def test_a_2x2x2_grid_expands_into_8_checked_runs_paired_by_seed():
    plan = plans.expand(grid_spec())
    runs = plan["runs"]
    assert len(runs) == 8 and plan["axes"] == ["so_weight", "seed", THIRD_KEY]
    # the pairing axis is outermost: seed 0's runs come first
    assert [r["values"]["seed"] for r in runs] == [0] * 4 + [1] * 4
    first = runs[0]
    assert first["name"] == f"so_weight=0,seed=0,{THIRD_KEY}={THIRD_VALUES[0]}"
    assert first["folder"] == f"runs/{first['name']}"
    # values are the checked config values (so_weight is a float)
    assert first["values"]["so_weight"] == 0.0
    assert isinstance(first["config"]["so_weight"], float)
    for run in runs:
        assert run["config"]["epochs"] == FIXED["epochs"]
        for key, value in run["values"].items():
            assert run["config"][key] == value
        assert run["config"]["output_dir"] == run["folder"]
    assert len({r["name"] for r in runs}) == 8
    # every run differs from its seed partner only in the grid values
    by_name = {r["name"]: r["config"] for r in runs}
    a = by_name[f"so_weight=0,seed=1,{THIRD_KEY}={THIRD_VALUES[0]}"]
    b = by_name[f"so_weight=1,seed=1,{THIRD_KEY}={THIRD_VALUES[0]}"]
    assert {k for k in a if a[k] != b[k]} == {"so_weight", "output_dir"}


def test_spec_file_with_flags_on_top(tmp_path):
    layer = tmp_path / "layer.yaml"
    layer.write_text("margin: 0.2\n")
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(
        "dataset: digits\nconfig: [layer.yaml]\noverrides: {epochs: 3, lr: 2.0e-3}\n"
        "grid:\n  so_weight: [0, 1]\n  seed: [0, 1]\npair_by: seed\n"
    )
    spec = specs.build_spec(str(spec_file), overrides={"epochs": 1},
                            grid=["seed=4,5,6"])  # fmt: skip
    plan = plans.expand(spec)
    assert len(plan["runs"]) == 6  # the flag's seeds replace the file's
    config = plan["runs"][0]["config"]
    assert config["epochs"] == 1 and config["lr"] == 2.0e-3
    assert config["margin"] == 0.2  # the layer, found beside the spec file
    assert plan["spec"]["grid"] == {"so_weight": [0, 1], "seed": [4, 5, 6]}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(grid=["sow_weight=0,1"]), "did you mean 'so_weight'"),
        (dict(grid=["so_weight=0,-1"]), r"so_weight.*-1.*grid value.*--grid so_weight"),
        (dict(grid=["output_dir=a,b"]), "cannot be a grid axis"),
        (dict(grid=["so_weight=0,1"], overrides=dict(so_weight=1.0)),
         "both a grid axis"),
        (dict(grid=["so_weight=0,1"], overrides=dict(output_dir="x")),
         "cannot be a sweep override"),
        (dict(grid=[]), "needs a grid"),
        (dict(grid=["so_weight=0,1"], dataset=None), "needs a dataset"),
        (dict(grid=["so_weight=0,1"], pair_by="sead"), "pair_by 'sead'"),
        (dict(grid=["so_weight=0,0.0"]), "the same config"),
    ],
)  # fmt: skip
def test_bad_specs_are_refused_with_one_sentence(kwargs, match):
    values = dict(dataset="digits", overrides=FIXED)
    values.update(kwargs)
    with pytest.raises(ConfigError, match=match):
        plans.expand(specs.build_spec(**values))


def test_bad_spec_files(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("dataset: digits\nso_weight: 1\n")
    with pytest.raises(ConfigError, match="unknown key 'so_weight'.*overrides"):
        specs.build_spec(str(spec))
    spec.write_text("dataset: digits\ngrid: {so_weight: 1}\n")
    with pytest.raises(ConfigError, match="must list one or more values"):
        specs.build_spec(str(spec))
    spec.write_text("dataset: digits\ngrid: [so_weight]\n")
    with pytest.raises(ConfigError, match="'grid' must be a mapping"):
        specs.build_spec(str(spec))


def test_folder_names_from_values():
    assert plans.format_value(0.0) == "0"
    assert plans.format_value(1e-05) == "1e-05"
    assert plans.format_value(0.1234567) == "0.1234567"  # :g would round it
    assert plans.format_value(True) == "true" and plans.format_value(None) == "null"
    assert plans.format_value("proxy_anchor") == "proxy_anchor"
    hashed = plans.format_value({"depth": 2})
    assert len(hashed) == 8 and hashed != plans.format_value({"depth": 3})
    assert plans.format_value("a/b") != "a/b"  # never a path separator


def test_a_later_sweep_may_add_runs_and_change_runtime_keys_only(tmp_path):
    sweep = str(tmp_path / "sweep")
    quiet = [].append
    first = prepare_plan(sweep, grid_spec(grid=["so_weight=0,1", "seed=0"]), quiet)
    saved = json.loads((tmp_path / "sweep" / plans.PLAN).read_text())
    assert saved["runs"] == first["runs"]
    # the same spec again, then one with a runtime key changed: accepted
    prepare_plan(sweep, grid_spec(grid=["so_weight=0,1", "seed=0"]), quiet)
    changed = dict(FIXED, eval_batch_size=64)
    prepare_plan(sweep, grid_spec(grid=["so_weight=0,1", "seed=0"],
                                  overrides=changed), quiet)  # fmt: skip
    # more seeds: runs added
    messages = []
    bigger = prepare_plan(sweep, grid_spec(grid=["so_weight=0,1", "seed=0,1"]),
                          messages.append)  # fmt: skip
    assert len(bigger["runs"]) == 4 and "adding 2 run(s)" in messages[0]
    with pytest.raises(ConfigError, match="another config.*epochs: 2 then, 3 now"):
        prepare_plan(sweep, grid_spec(grid=["so_weight=0,1", "seed=0,1"],
                                      overrides=dict(FIXED, epochs=3)), quiet)  # fmt: skip
    with pytest.raises(ConfigError, match="holds another sweep"):
        prepare_plan(sweep, grid_spec(grid=["so_weight=0,1", "seed=1"]), quiet)
    with pytest.raises(ConfigError, match="holds another sweep"):
        prepare_plan(sweep, grid_spec(grid=["so_weight=0,1", "margin=0.1,0.2"]), quiet)


def test_run_states_come_from_the_run_folders(tmp_path):
    sweep = str(tmp_path)
    plan = prepare_plan(sweep, grid_spec(grid=["so_weight=0,1"]), [].append)
    run = plan["runs"][0]
    folder = plans.run_folder(sweep, run)
    assert plans.run_state(sweep, run) == "new"
    os.makedirs(folder)
    open(os.path.join(folder, "checkpoint_latest.pt"), "wb").close()
    assert plans.run_state(sweep, run) == "unfinished"
    config = dict(run["config"], output_dir=os.path.abspath(folder))
    with open(os.path.join(folder, "results.json"), "w") as f:
        json.dump({"config": config}, f)
    assert plans.run_state(sweep, run) == "finished"  # output_dir may differ
    older = {k: v for k, v in config.items() if k != "margin"}  # an older schema
    with open(os.path.join(folder, "results.json"), "w") as f:
        json.dump({"config": older}, f)
    assert plans.run_state(sweep, run) == "finished"  # its default is the same
    with open(os.path.join(folder, "results.json"), "w") as f:
        json.dump({"config": dict(config, so_weight=0.5)}, f)
    with pytest.raises(ConfigError, match="finished run of another config.*so_weight"):
        plans.run_state(sweep, run)
    with open(os.path.join(folder, "results.json"), "w") as f:
        f.write("{")
    with pytest.raises(ConfigError, match="not readable JSON"):
        plans.run_state(sweep, run)


def test_cli_dry_run_lists_the_plan_and_resumes_from_it(tmp_path, capsys):
    sweep = str(tmp_path / "sweep")
    flags = ["--epochs", "1", "--iterations-per-epoch", "1", "--device", "cpu"]
    code = cli.main(["sweep", sweep, "--dataset", "digits", "--grid", "so_weight=0,1",
                     "--grid", "seed=0,1", *flags, "--dry-run"])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "new  so_weight=0,seed=0" in out and "4 to start" in out
    # no spec: the stored one
    assert cli.main(["sweep", sweep, "--dry-run"]) == 0
    assert "4 runs: 0 finished, 0 to resume, 4 to start" in capsys.readouterr().out
    assert cli.main(["sweep", sweep, "--dry-run", "--epochs", "5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pml-soproxy: error: ") and "epochs: 1 then, 5 now" in err
    assert len(err.strip().splitlines()) == 1


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert cli.main(["sweep", str(tmp_path), "--dataset", "digits", "--grid",
                     "sow_weight=0,1"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "did you mean 'so_weight'" in err and len(err.strip().splitlines()) == 1
    assert cli.main(["compare", str(tmp_path / "nothing")]) == 2
    assert "no folder of a sweep" in capsys.readouterr().err
