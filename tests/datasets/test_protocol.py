"""Each dataset class carries its protocol record, and every reader of a protocol
fact (calculator, recipe configs and builder, benchmarker configs and door) takes
it from there: nobody else types a K set."""

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from pml_soproxy.datasets import (
    DATASETS,
    PROTOCOLS,
    DatasetProtocol,
    InShop,
    dataset_class,
    protocol_of,
)
from pml_soproxy.evaluation import RECALL_AT_K, RecallAtKCalculator

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "pml_soproxy"
BENCHMARKER_CONFIGS = ROOT / "benchmarker_configs"


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_every_registered_dataset_has_a_complete_record(name):
    cls = DATASETS[name]
    protocol = cls.protocol
    assert isinstance(protocol, DatasetProtocol)
    assert protocol.name == name
    # (K values and samples per class are checked by the record itself)
    assert protocol.official_split.strip()
    # only In-Shop searches queries against a separate gallery
    assert protocol.retrieval == ("query_gallery" if name == "inshop" else "self")
    for split in (protocol.train_split,) + protocol.test_splits:
        assert split in cls.splits, (name, split)
    assert protocol.train_split not in protocol.test_splits
    assert protocol_of(name) is protocol is PROTOCOLS[name]


def test_records_say_self_retrieval_or_query_gallery():
    assert InShop.protocol.retrieval == "query_gallery"
    assert InShop.protocol.query_split == "query"
    assert InShop.protocol.reference_splits == ("gallery",)
    assert InShop.protocol.test_splits == ("query", "gallery")
    for name in ("cub200", "cars196", "sop", "folder", "digits"):
        protocol = protocol_of(name)
        assert protocol.retrieval == "self"
        assert protocol.reference_splits == (protocol.query_split,) == ("test",)


def test_lookup_by_name_and_alias():
    assert protocol_of("CUB-200") is protocol_of("cub") is DATASETS["cub200"].protocol
    assert dataset_class("Stanford_Online_Products").protocol.name == "sop"
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'.*cub200"):
        protocol_of("imagenet")


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"recall_at": ()}, "positive integers"),
        ({"recall_at": (0, 1)}, "positive integers"),
        ({"recall_at": (8, 1)}, "sorted"),
        ({"samples_per_class": 0}, "samples_per_class"),
    ],
)
def test_a_malformed_record_is_refused(changes, message):
    fields = dict(name="x", recall_at=(1, 2), samples_per_class=2, official_split="s")
    fields.update(changes)
    with pytest.raises(ValueError, match=message):
        DatasetProtocol(**fields)


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_the_calculator_takes_its_k_set_from_the_record(name):
    ks = DATASETS[name].protocol.recall_at
    assert RECALL_AT_K[name] == ks
    assert RecallAtKCalculator.for_dataset(name).recall_at == ks
    assert RecallAtKCalculator(dataset=name).recall_at == ks
    assert RecallAtKCalculator().recall_at == protocol_of("cub200").recall_at
    with pytest.raises(ValueError, match="not both"):
        RecallAtKCalculator(recall_at=(1, 2), dataset=name)


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_the_recipe_configs_agree_with_the_record(name):
    from pml_soproxy.training.config import load_config, recall_at

    config = load_config(name)
    assert recall_at(config) == protocol_of(name).recall_at
    assert config.samples_per_class == protocol_of(name).samples_per_class


def test_the_recipe_evaluates_the_records_splits(monkeypatch):
    from pml_soproxy.training import builder
    from pml_soproxy.training.config import load_config

    seen = []

    class Stop(Exception):
        pass

    def recording(config, split, transform=None):
        seen.append(split)
        raise Stop  # the splits asked for are all this test needs

    monkeypatch.setattr(builder, "create_dataset", recording)
    model = SimpleNamespace(eval_transform=None)
    with pytest.raises(Stop):
        builder.evaluate_test(load_config("inshop"), model, "cpu")
    assert seen and set(seen) <= set(InShop.protocol.test_splits)
    with pytest.raises(Stop):
        builder.build_data(load_config("inshop"))
    assert seen[-1] == InShop.protocol.train_split


@pytest.mark.parametrize("name", ["cub200", "cars196", "sop", "inshop"])
def test_the_benchmarker_eval_configs_name_the_dataset_not_its_k_set(name):
    config = yaml.safe_load(
        (BENCHMARKER_CONFIGS / "config_eval" / f"{name}.yaml").read_text()
    )
    calculator = config["tester~APPLY~2"]["accuracy_calculator"]["RecallAtKCalculator"]
    assert calculator["dataset"] == name and "recall_at" not in calculator
    assert RecallAtKCalculator(**calculator).recall_at == protocol_of(name).recall_at


def _k_set_pattern(ks):
    # the K set as a literal list or tuple: (1, 10, 100, 1000), [1, 10, 100, 1000]
    return re.compile(r"[\[(]\s*" + r"\s*,\s*".join(map(str, ks)) + r"\s*,?\s*[\])]")


def test_no_k_set_is_typed_outside_the_datasets():
    patterns = {_k_set_pattern(p.recall_at) for p in PROTOCOLS.values()}
    files = [
        *PACKAGE.rglob("*.py"),
        *PACKAGE.rglob("*.yaml"),
        *BENCHMARKER_CONFIGS.rglob("*.yaml"),
    ]
    typed = []
    for path in files:
        relative = path.resolve().relative_to(ROOT).as_posix()
        if relative.startswith("pml_soproxy/datasets/"):
            continue
        text = path.read_text(encoding="utf-8")
        typed += [relative for pattern in patterns if pattern.search(text)]
    assert not typed, f"K sets typed outside pml_soproxy/datasets/: {typed}"


@pytest.mark.parametrize("name", ["cub200", "cars196", "sop", "inshop"])
def test_the_benchmarker_presets_sample_the_records_images_per_class(name):
    # powerful-benchmarker's sampler: its default m=4, or two_per_class (m=2)
    preset = yaml.safe_load(
        (BENCHMARKER_CONFIGS / "presets" / f"{name}.yaml").read_text()
    )
    layers = preset["config_loss_and_miners"]
    two = yaml.safe_load(
        (
            BENCHMARKER_CONFIGS / "config_loss_and_miners" / "two_per_class.yaml"
        ).read_text()
    )
    m = two["sampler~APPLY~2"]["m"] if "two_per_class" in layers else 4
    assert m == protocol_of(name).samples_per_class
