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


def test_presets_expand_to_pb_flags():
    argv = runner.expand_preset(
        ["sop", "baseline", "cpu_smoke"], ["--experiment_name", "x"]
    )
    flags = dict(zip(argv[2::2], argv[3::2]))
    assert flags["--config_loss_and_miners"] == (
        "[default, so_proxy_anchor, two_per_class, proxy_anchor, cpu_smoke]"
    )
    assert flags["--config_general"] == "[default, with_sop, soproxy, cpu_smoke]"
    # a list on the command line wins
    argv = runner.expand_preset(["cub200"], ["--config_models", "[default, deit_b]"])
    assert argv.count("--config_models") == 1 and "[default, deit_b]" in argv
    for bad in (["cpu_smoke"], ["cub200", "sop"]):
        with pytest.raises(SystemExit):
            runner.main(
                [a for p in bad for a in ("--preset", p)] + ["--experiment_name", "x"]
            )
    with pytest.raises(SystemExit, match="ax-platform"):
        runner.main(["--bayes_opt_iters", "5", "--experiment_name", "x"])


def test_missing_config_names_the_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="config_models/nope.yaml"):
        runner.main(
            [
                "--preset", "cub200",
                "--config_models", "[default, nope]",
                "--root_experiment_folder", str(tmp_path),
                "--experiment_name", "x",
            ]
        )  # fmt: skip


def test_every_preset_and_config_loads():
    """Every preset names existing YAML files, PB's or ours."""
    import os

    pb_runner = runner.build_runner(runner.launcher_parser().parse_args([]))
    for preset in runner.DATASET_PRESETS:
        for extra in ([], ["baseline"], ["cpu_smoke"]):
            for kind, names in runner.load_preset(preset).items():
                names = names + sum(
                    (runner.load_preset(e).get(kind, []) for e in extra), []
                )
                for name in names:
                    path = pb_runner.find_config(os.path.join(kind, f"{name}.yaml"))
                    assert path is not None, (preset, kind, name)
    assert np.all([f.is_file() for f in (runner.CONFIG_DIR / "presets").iterdir()])
