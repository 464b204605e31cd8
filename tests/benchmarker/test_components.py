"""Our trunk, datasets, split manager and launcher as powerful-benchmarker sees them."""

import numpy as np
import pytest
import torch

from .helpers import make_tree, require_benchmarker

require_benchmarker()

import timm  # noqa: E402

from pml_soproxy.benchmarker import compat, components, runner  # noqa: E402
from pml_soproxy.trunks import Trunk, deit_trunk  # noqa: E402

TINY = dict(img_size=32, patch_size=8, depth=1, embed_dim=32, num_heads=2)


@pytest.fixture(scope="module", autouse=True)
def shims_removed_afterwards():
    yield
    compat.uninstall()


@pytest.fixture(scope="module")
def getter():
    """A registered PB runner's getter (shims installed)."""
    return runner.build_runner(runner.launcher_parser().parse_args([])).pytorch_getter


class PlainDeiT(Trunk):
    """deit_trunk's Trunk as is: no .fc."""

    def __init__(self):
        built = deit_trunk("deit_tiny_patch16_224", pretrained=False, **TINY)
        super().__init__(built.model, built.data_config)


def test_trunk_for_pb_model_factory(getter, tmp_path):
    from powerful_benchmarker.factories import ModelFactory

    # PB reads .fc.in_features (or .last_linear) of a trunk, then removes .fc
    factory = ModelFactory(getter=getter)
    getter.register("model", PlainDeiT)
    with pytest.raises(AssertionError, match="could not be inferred"):
        factory.create_trunk({"PlainDeiT": {}})
    spec = {
        "DeiTTrunk": dict(model_name="deit_tiny_patch16_224", pretrained=False, **TINY)
    }
    trunk = factory.create_trunk(spec)
    assert factory.base_model_output_size == 32
    assert isinstance(trunk.fc, torch.nn.Identity)
    assert trunk(torch.zeros(2, 3, 32, 32)).shape == (2, 32)
    # what PB's TransformFactory reads
    assert trunk.mean == list(trunk.data_config["mean"]) and trunk.input_range == [0, 1]

    # pretrained weights from a local file, as the YAML's checkpoint_path gives them
    source = timm.create_model("deit_tiny_patch16_224", pretrained=False, **TINY)
    torch.save(source.state_dict(), tmp_path / "deit_tiny.pth")
    spec["DeiTTrunk"].update(
        pretrained=True, checkpoint_path=str(tmp_path / "deit_tiny.pth")
    )
    loaded = factory.create_trunk(spec)
    torch.testing.assert_close(loaded.model.pos_embed, source.pos_embed)


@pytest.mark.parametrize("dataset", ["cub200", "cars196", "sop", "inshop"])
def test_datasets_in_pb_format(dataset, tmp_path):
    make_tree(dataset, tmp_path)
    cls = {
        "cub200": components.CUB200,
        "cars196": components.Cars196,
        "sop": components.StanfordOnlineProducts,
        "inshop": components.InShop,
    }[dataset]
    ds = cls(str(tmp_path), transform=lambda image: image.size)
    assert len(ds) == 32 and sorted(set(ds.labels.tolist())) == list(range(8))
    item = ds[5]
    assert set(item) == {"data", "label"} and item["label"] == ds.labels[5]
    with pytest.raises(ValueError, match="download is not supported"):
        cls(str(tmp_path), download=True)


def test_the_inshop_door_reads_the_list_file_once(tmp_path, monkeypatch):
    # the door uses the reader's public evaluation_status, not its internals
    from pml_soproxy.datasets import base, inshop, listing

    make_tree("inshop", tmp_path)
    reads, read_rows = [], listing.read_rows

    def counting(dataset, path, *args, **kwargs):
        reads.append(path)
        return read_rows(dataset, path, *args, **kwargs)

    for module in (base, inshop, listing):
        monkeypatch.setattr(module, "read_rows", counting)
    ds = components.InShop(str(tmp_path))
    assert [p.name for p in reads] == ["list_eval_partition.txt"]
    assert len(ds.evaluation_status) == len(ds)
    assert set(ds.evaluation_status.tolist()) == {"train", "query", "gallery"}


def test_inshop_split_manager(getter, tmp_path):
    from powerful_benchmarker.factories import SplitManagerFactory

    make_tree("inshop", tmp_path)
    manager = SplitManagerFactory(getter=getter).create(
        {"InShopSplitManager": {"num_training_partitions": 2, "num_training_sets": 2}},
        kwargs=dict(
            dataset=components.InShop,
            original_dataset_params={},
            transforms={"train": None, "eval": None},
            dataset_root=str(tmp_path),
        ),
    )  # PB's split assertions pass inside create()
    assert manager.split_scheme_names == [
        "InShopQueryGallery_Partitions2_0",
        "InShopQueryGallery_Partitions2_1",
    ]
    status = manager.get_dataset("eval", "test").dataset.evaluation_status
    classes = {}
    for name in ("train", "val", "test", "gallery"):
        subset = manager.get_dataset("eval", name)
        classes[name] = set(manager.get_labels(dataset=subset).tolist())
        expected = {
            "train": "train",
            "val": "train",
            "test": "query",
            "gallery": "gallery",
        }
        assert set(status[subset.indices]) == {expected[name]}
    assert len(manager.get_dataset("eval", "test")) == 4
    assert len(manager.get_dataset("eval", "gallery")) == 12
    assert classes["test"] == classes["gallery"]
    assert not classes["train"] & classes["val"] and len(classes["train"]) == 2
    assert list(manager.get_dataset_dict("eval", inclusion_list=["test"])) == [
        "test",
        "gallery",
    ]
    assert list(manager.get_dataset_dict("eval", inclusion_list=["val"])) == ["val"]


def flags_of(argv):
    return dict(zip(argv[2::2], argv[3::2]))


def test_presets_expand_to_pb_flags():
    argv = runner.expand_preset(
        ["sop", "baseline", "cpu_smoke"], ["--experiment_name", "x"]
    )
    flags = flags_of(argv)
    assert flags["--config_loss_and_miners"] == (
        "[default, two_per_class, proxy_anchor, cpu_smoke]"
    )
    assert flags["--config_general"] == "[default, with_sop, soproxy, cpu_smoke]"
    # the default loss, and the loss preset's search space with --preset search
    flags = flags_of(runner.expand_preset(["cub200"], ["--experiment_name", "x"]))
    assert flags["--config_loss_and_miners"] == "[default, so_proxy_anchor]"
    flags = flags_of(
        runner.expand_preset(["search", "so_arcface", "cub200"], ["--x", "y"])
    )
    assert flags["--config_loss_and_miners"] == (
        "[default, so_arcface, so_arcface_search]"
    )
    # a list on the command line wins
    argv = runner.expand_preset(["cub200"], ["--config_models", "[default, deit_b]"])
    assert argv.count("--config_models") == 1 and "[default, deit_b]" in argv


def merged(argv, kind):
    """What PB's YamlReader makes of the ``--config_<kind>`` list in ``argv``: the
    files merged in order with its key words (easy_module_attribute_getter)."""
    import os

    import yaml
    from easy_module_attribute_getter import utils as emag

    search = runner.build_runner(runner.launcher_parser().parse_args([]))
    names = flags_of(argv)[f"--{kind}"].strip("[]").split(", ")
    config = {}
    for name in names:
        with open(search.find_config(os.path.join(kind, f"{name}.yaml"))) as f:
            config = emag.merge_two_dicts(
                config, yaml.safe_load(f), max_merge_depth=float("inf"),
                force_override_key_word="~OVERRIDE~", apply_key_word="~APPLY~",
                delete_key_word="~DELETE~", swap_key_word="~SWAP~",
            )  # fmt: skip
    return config


def test_preset_layering_does_not_depend_on_the_order_given():
    import itertools

    orders = list(itertools.permutations(["cub200", "cpu_smoke", "baseline"]))
    expanded = {tuple(runner.expand_preset(list(o), [])) for o in orders}
    assert len(expanded) == 1
    # the smoke run's 16-d embedder and the baseline loss: no shape error
    loss = merged(list(expanded.pop()), "config_loss_and_miners")["loss_funcs"]
    assert loss == {"metric_loss": {"ProxyAnchorLoss": {
        "embedding_size": 16, "margin": 0.1, "alpha": 32}}}  # fmt: skip


@pytest.mark.parametrize(
    "presets, message",
    [
        (["cub200", "baseline", "so_arcface"], "--preset baseline and --preset "
         "so_arcface are both loss presets, so the later would undo the earlier"),
        (["cub200", "sop"], "exactly one dataset preset"),
        (["cpu_smoke", "baseline"], "exactly one dataset preset"),
        (["cub200", "search"], "--preset search adds ~BAYESIAN~ ranges"),
    ],
)  # fmt: skip
def test_conflicting_presets_are_refused_with_one_sentence(presets, message, capsys):
    with pytest.raises(SystemExit):
        runner.main(
            [a for p in presets for a in ("--preset", p)] + ["--experiment_name", "x"]
        )
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in error


def test_a_flag_ending_in_a_colon_is_refused(capsys):
    with pytest.raises(SystemExit):
        runner.main(["--preset", "cub200", "--experiment_name", "x",
                     "--trainer~APPLY~2:", "{batch_size:", "64}"])  # fmt: skip
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--trainer~APPLY~2: ends in a colon" in error
    assert "--trainer~APPLY~2 {batch_size: 64}" in error


@pytest.mark.parametrize(
    "flag, batch_size", [("--trainer~APPLY~2", 64), ("--trainer~APPLY~2:", 120)]
)
def test_only_the_override_form_without_colon_reaches_the_config(
    flag, batch_size, tmp_path
):
    """PB's own reader: the README's form sets the batch size; with the colon the
    key is ``trainer~APPLY~2:`` and nothing changes (what the launcher refuses)."""
    import sys

    argv = runner.expand_preset(
        ["cub200"], [flag, "{batch_size:", "64}", "--experiment_name", "x"]
    )
    pb_runner = runner.build_runner(
        runner.launcher_parser().parse_args(["--root_experiment_folder", str(tmp_path)])
    )
    saved = sys.argv
    sys.argv = ["pb"] + argv
    try:
        reader = pb_runner.setup_yaml_reader()
        args, _, _ = reader.load_yamls(
            pb_runner.get_root_config_paths(reader.args),
            max_merge_depth=float("inf"), max_argparse_merge_depth=float("inf"),
        )  # fmt: skip
    finally:
        sys.argv = saved
    assert args.trainer["MetricLossOnly"]["batch_size"] == batch_size


LOSS_PRESETS = [n for n in runner.PRESETS if runner.load_preset(n)["layer"] == "loss"]
#: the PML class each loss preset builds, and whether SO is in it
LOSSES = {
    "proxy_anchor": ("ProxyAnchorLoss", False),
    "baseline": ("ProxyAnchorLoss", False),
    "so_proxy_anchor": ("SoftOrthogonalProxyAnchorLoss", True),
    "proxy_nca": ("ProxyNCALoss", False),
    "normalized_softmax": ("NormalizedSoftmaxLoss", False),
    "soft_triple": ("SoftTripleLoss", False),
    "arcface": ("ArcFaceLoss", False),
    "cosface": ("CosFaceLoss", False),
}
LOSSES.update({f"so_{k}": (c, True) for k, (c, _) in list(LOSSES.items())[3:]})


def test_every_preset_and_config_loads():
    """Every preset combination names existing YAML files, PB's or ours."""
    import itertools
    import os

    pb_runner = runner.build_runner(runner.launcher_parser().parse_args([]))
    datasets = [
        n for n in runner.PRESETS if runner.load_preset(n)["layer"] == "dataset"
    ]
    assert set(datasets) == {"cub200", "cars196", "sop", "inshop"}
    assert set(LOSS_PRESETS) == set(LOSSES)
    combinations = itertools.product(
        datasets, LOSS_PRESETS, ([], ["search"]), ([], ["cpu_smoke"])
    )
    for dataset, loss, search, size in combinations:
        argv = runner.expand_preset([dataset, loss] + search + size, [])
        for kind, names in flags_of(argv).items():
            for name in names.strip("[]").split(", "):
                path = pb_runner.find_config(os.path.join(kind[2:], f"{name}.yaml"))
                assert path is not None, (dataset, loss, kind, name)
    assert all(f.is_file() for f in (runner.CONFIG_DIR / "presets").iterdir())


def build_pb_loss(getter, loss_funcs):
    from powerful_benchmarker.factories import LossFactory

    return LossFactory(getter=getter).create(
        named_specs=loss_funcs, kwargs={"num_classes": 5}
    )["metric_loss"]


@pytest.mark.parametrize("preset", sorted(LOSSES))
def test_every_loss_preset_builds_its_pml_loss_with_or_without_so(getter, preset):
    config = merged(runner.expand_preset(["cub200", preset, "cpu_smoke"], []),
                    "config_loss_and_miners")  # fmt: skip
    loss = build_pb_loss(getter, config["loss_funcs"])
    cls, with_so = LOSSES[preset]
    assert type(loss).__name__ == cls
    regularizer = loss.weight_regularizer
    assert (regularizer is not None) == with_so
    if with_so:
        from pml_soproxy import SoftOrthogonalityRegularizer
        from pml_soproxy.training.builder import class_weights

        assert isinstance(regularizer, SoftOrthogonalityRegularizer)
        assert loss.weight_reg_weight == 1.0
        assert class_weights(loss).shape[1] == 16  # rows = class weights, D = 16
    embeddings, labels = torch.randn(10, 16), torch.arange(10) % 5
    assert torch.isfinite(loss(embeddings, labels))


@pytest.mark.parametrize("preset", sorted(set(LOSSES) - {"baseline"}))
def test_every_search_space_is_valid_powerful_benchmarker_syntax(getter, preset):
    """Every ~BAYESIAN~ key holds [low, high] (log: > 0; int: integers) and names a
    real argument of the loss: the loss builds with each range's ends."""
    from powerful_benchmarker.utils.constants import BAYESIAN_KEYWORDS

    argv = runner.expand_preset(["cub200", preset, "search", "cpu_smoke"], [])
    config = merged(argv, "config_loss_and_miners")
    ((name, kwargs),) = config["loss_funcs"]["metric_loss"].items()
    space = {k: v for k, v in kwargs.items() if k.endswith(BAYESIAN_KEYWORDS)}
    so_key = "so_weight" if name == "SoftOrthogonalProxyAnchorLoss" else (
        "weight_reg_weight")  # fmt: skip
    searched = {k.rsplit("~", 2)[0] for k in space}
    assert (so_key in searched) == preset.startswith("so_")
    assert searched - {so_key}, "the loss's own hyper-parameters are searched"
    for key, (low, high) in space.items():
        assert low < high, key
        if "~LOG" in key:
            assert low > 0, key
        if "~INT" in key:
            assert isinstance(low, int) and isinstance(high, int), key
    for end in (0, 1):
        plain = {k: v for k, v in kwargs.items() if k not in space}
        plain.update({k.rsplit("~", 2)[0]: v[end] for k, v in space.items()})
        loss = build_pb_loss(getter, {"metric_loss": {name: plain}})
        for key, bounds in space.items():
            argument = key.rsplit("~", 2)[0]
            value = getattr(loss, argument)
            if argument == "gamma":  # PML keeps 1 / gamma
                value = 1 / value
            if argument == "margin" and name == "ArcFaceLoss":  # kept in radians
                value = float(np.degrees(value))
            assert value == pytest.approx(bounds[end]), key


def test_launcher_help_imports_neither_torch_nor_powerful_benchmarker(tmp_path):
    """``--help`` answers from the launcher's parser alone (lazy imports; the time
    is measured by benchmarks/bench_cli_startup.py)."""
    import subprocess
    import sys

    for call in (
        "from pml_soproxy.benchmarker import runner\nrunner.main(['--help'])",
        "from pml_soproxy import cli\ncli.main(['benchmark', '--help'])",
    ):
        code = (
            f"import sys\ntry:\n    {call.replace(chr(10), chr(10) + '    ')}\n"
            "except SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'powerful_benchmarker', 'numpy') "
            "if m in sys.modules))"
        )
        result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path,
                                capture_output=True, text=True, timeout=300)  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert "--preset NAME" in result.stdout, call
        assert result.stdout.strip().splitlines()[-1] == "[]", call
