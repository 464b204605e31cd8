"""Each shim: powerful-benchmarker's (PB's) call fails without it, works with it.

Every test starts and ends with all shims uninstalled and installs only the
shim under test (and those its scenario needs first).
"""

import datetime
import hashlib
import importlib
import inspect
import sqlite3
import sys

import pytest

from .helpers import make_sop, require_benchmarker

require_benchmarker()

import torch  # noqa: E402
from pytorch_metric_learning.testers import GlobalEmbeddingSpaceTester  # noqa: E402
from pytorch_metric_learning.utils import logging_presets  # noqa: E402
from pytorch_metric_learning.utils.logging_presets import HookContainer  # noqa: E402

from pml_soproxy import RecallAtKCalculator  # noqa: E402
from pml_soproxy.benchmarker import compat  # noqa: E402


@pytest.fixture(autouse=True)
def no_shims():
    compat.uninstall()
    yield
    compat.uninstall()


def make_tester(**kwargs):
    return GlobalEmbeddingSpaceTester(
        dataloader_num_workers=0,
        accuracy_calculator=RecallAtKCalculator(recall_at=[1, 2]),
        **kwargs,
    )


def embeddings(n_classes=3, per_class=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n_classes * per_class, 8, generator=generator)
    y = torch.arange(n_classes).repeat_interleave(per_class)
    return torch.utils.data.TensorDataset(x, y)


def record_keeper(folder):
    return logging_presets.get_record_keeper(str(folder))[0]


def old_gdown():
    return hasattr(importlib.import_module("gdown.cached_download"), "assert_md5sum")


def old_pandas():
    import pandas

    return "delim_whitespace" in inspect.signature(pandas.read_csv).parameters


def test_every_shim_is_needed_here_and_a_no_op_once_applied():
    needed = {name: True for name in compat.SHIMS}
    needed.update(
        gdown_assert_md5sum=not old_gdown(), pandas_delim_whitespace=not old_pandas()
    )
    assert compat.install() == needed
    assert compat.installed() == [name for name in compat.SHIMS if needed[name]]
    # each detects that the library now has what PB needs
    assert not any(shim() for shim in compat.SHIMS.values())
    assert compat.install() == {name: False for name in compat.SHIMS}
    with pytest.raises(ValueError, match="unknown shim"):
        compat.install(["nope"])


def test_gdown_assert_md5sum(tmp_path):
    if old_gdown():
        pytest.skip("gdown < 5 has assert_md5sum: the shim is a no-op")
    import powerful_benchmarker

    def fresh_import():
        prefix = "powerful_benchmarker.datasets"
        saved = {k: v for k, v in sys.modules.items() if k.startswith(prefix)}
        saved_attr = powerful_benchmarker.__dict__.get("datasets")
        for k in saved:
            del sys.modules[k]
        try:
            return importlib.import_module(prefix + ".cub200")
        finally:
            for k in [k for k in sys.modules if k.startswith(prefix)]:
                del sys.modules[k]
            sys.modules.update(saved)
            if saved_attr is not None:
                powerful_benchmarker.datasets = saved_attr

    with pytest.raises(ImportError, match="assert_md5sum"):
        fresh_import()
    assert compat.install(["gdown_assert_md5sum"]) == {"gdown_assert_md5sum": True}
    cub200 = fresh_import()
    path = tmp_path / "file"
    path.write_bytes(b"abc")
    cub200.assert_md5sum(str(path), hashlib.md5(b"abc").hexdigest())
    with pytest.raises(AssertionError):
        cub200.assert_md5sum(str(path), "0" * 32)


def test_pml_identity():
    from powerful_benchmarker.runners.single_experiment_runner import (
        SingleExperimentRunner,
    )

    compat.install(["gdown_assert_md5sum"])
    with pytest.raises(AttributeError, match="Identity"):
        SingleExperimentRunner()
    compat.install(["pml_identity"])
    runner = SingleExperimentRunner()
    assert (
        runner.pytorch_getter.get("model", "Identity", {}).__class__
        is torch.nn.Identity
    )


def test_record_keeper_save_figures(tmp_path):
    from powerful_benchmarker.factories import RecordKeeperFactory

    # what PB's default_kwargs_record_keeper passes
    spec = dict(
        csv_folder=str(tmp_path),
        tensorboard_folder=None,
        global_db_path=None,
        experiment_name="e",
        is_new_experiment=True,
        save_figures=False,
        save_lists=False,
    )
    factory = RecordKeeperFactory(getter=None)
    with pytest.raises(TypeError, match="save_figures"):
        factory.create(specs=dict(spec))
    compat.install(["record_keeper_save_figures"])
    keeper = factory.create(specs=dict(spec))
    assert keeper.record_writer.folder == str(tmp_path)


def test_record_keeper_group_name_kwarg(tmp_path):
    keeper = record_keeper(tmp_path)
    when = datetime.datetime(2020, 8, 7, 12, 0)
    row = {"trained_status": "trained", "timestamp": when}
    with pytest.raises(TypeError, match="input_group_name_for_non_objects"):
        keeper.update_records(
            row, global_iteration=1, input_group_name_for_non_objects="MeanAggregator_x"
        )
    compat.install(["record_keeper_group_name_kwarg"])
    # PB's aggregator records accuracies, then status and time, for one row
    keeper.update_records(
        {"recall_at_1_level0": 0.5},
        1,
        input_group_name_for_non_objects="MeanAggregator_x",
    )
    keeper.update_records(row, 1, input_group_name_for_non_objects="MeanAggregator_x")
    keeper.save_records()
    (saved,) = keeper.query("SELECT * FROM MeanAggregator_x")
    assert saved["recall_at_1_level0"] == 0.5
    assert saved["trained_status"] == "trained" and saved["timestamp"] == when


def test_record_keeper_long_group_names(tmp_path):
    from powerful_benchmarker.utils import common_functions as pb_cf

    compat.install(["record_keeper_group_name_kwarg"])
    # PB's aggregator table when the tester evaluates the trunk output
    group = "MeanAggregator_accuracies_normalized_trunk_GlobalEmbeddingSpaceTester_level_0_VAL_vs_self"

    def aggregate(folder):
        keeper = record_keeper(folder)
        keeper.update_records(
            {"mean_average_precision_at_r_level0": 0.25, "trained_status": "trained"},
            1,
            input_group_name_for_non_objects=group,
        )
        keeper.save_records()
        # PB's get_accuracy_and_standard_error
        return keeper.query(
            f"SELECT mean_average_precision_at_r_level0 FROM {group} WHERE trained_status=?",
            values=("trained",),
        )

    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        aggregate(tmp_path / "without")
    compat.install(["record_keeper_long_group_names"])
    assert aggregate(tmp_path / "with")[0]["mean_average_precision_at_r_level0"] == 0.25
    assert pb_cf.try_getting_db_count(record_keeper(tmp_path / "with"), group) == 1


def test_tester_reference_set():
    data = embeddings()
    with pytest.raises(TypeError, match="reference_set"):
        make_tester(reference_set="compared_to_self")  # PB's config_eval/default.yaml
    with pytest.raises(ValueError, match="unpack"):
        make_tester().test(
            {"val": data}, 1, torch.nn.Identity(), splits_to_eval=["val"]
        )

    compat.install(["tester_reference_set"])
    t = make_tester(reference_set="compared_to_self")
    accuracies = t.test({"val": data}, 1, torch.nn.Identity(), splits_to_eval=["val"])
    assert t.reference_split_names == {"val": ["val"]}
    assert {"recall_at_1_level0", "mean_average_precision_at_r_level0"} <= set(
        accuracies["val"]
    )
    # In-Shop: the queries ("test") searched in the gallery
    t = make_tester(reference_set={"test": ["gallery"]})
    splits = {"test": embeddings(seed=1), "gallery": embeddings(seed=2)}
    accuracies = t.test(splits, 1, torch.nn.Identity(), splits_to_eval=["test"])
    assert t.reference_split_names == {"test": ["gallery"]}
    assert list(accuracies) == ["test"]
    # splits_to_eval=None (PML's end_of_epoch_hook): the gallery is not a query
    t.test(splits, 2, torch.nn.Identity())
    assert list(t.all_accuracies) == ["test"]
    # PML 2 tuples pass through
    t.test(splits, 3, torch.nn.Identity(), splits_to_eval=[("gallery", ["gallery"])])
    assert t.reference_split_names["gallery"] == ["gallery"]


def test_hook_record_group_name():
    from powerful_benchmarker.utils import common_functions as pb_cf

    hooks = HookContainer(record_keeper=None)  # as in PB's get_dummy_hook_and_tester
    t = make_tester()
    with pytest.raises(KeyError, match="val"):  # no tester.test() yet
        pb_cf.get_eval_record_name_dict(hooks, t, ["val"])
    t.reference_split_names["val"] = ["val"]
    with pytest.raises(AttributeError, match="hash_map"):
        pb_cf.get_eval_record_name_dict(hooks, t, ["val"])

    compat.install(["hook_record_group_name"])
    expected = "accuracies_normalized_GlobalEmbeddingSpaceTester_level_0_VAL_vs_self"
    assert pb_cf.get_eval_record_name_dict(hooks, make_tester(), ["val"]) == {
        "val": expected
    }
    assert hooks.record_keeper is None
    compat.install(["tester_reference_set"])
    t = make_tester(reference_set={"test": ["gallery"]})
    assert hooks.record_group_name(t, "test").endswith("_TEST_vs_GALLERY")


def test_pandas_delim_whitespace(tmp_path):
    if old_pandas():
        pytest.skip("pandas < 3 has delim_whitespace: the shim is a no-op")
    import pandas

    compat.install(["gdown_assert_md5sum"])
    from powerful_benchmarker.datasets import StanfordOnlineProducts

    make_sop(tmp_path)
    with pytest.raises(TypeError, match="delim_whitespace"):
        StanfordOnlineProducts(str(tmp_path))
    compat.install(["pandas_delim_whitespace"])
    # now it reads the list files, and stops at PB's assertion of the full size
    with pytest.raises(AssertionError):
        StanfordOnlineProducts(str(tmp_path))
    frame = pandas.read_csv(
        tmp_path / "Stanford_Online_Products" / "Ebay_train.txt",
        delim_whitespace=True,
        header=0,
    )
    assert list(frame.columns) == ["image_id", "class_id", "super_class_id", "path"]
    assert len(frame) == 16


def test_ensemble_record_rows(tmp_path):
    from powerful_benchmarker.utils import common_functions as pb_cf

    compat.install(["record_keeper_group_name_kwarg"])
    keeper = record_keeper(tmp_path)
    hooks = HookContainer(keeper, record_group_name_prefix="ConcatenateEmbeddings")
    t = make_tester()
    t.reference_split_names = {"test": ["test"]}
    t.all_accuracies = {
        "test": {"epoch": "trained", "mean_average_precision_at_r_level0": 0.5}
    }
    group = hooks.record_group_name(t, "test")

    def pb_eval_ensemble_records():
        """What PB's eval_ensemble does once its tester has run on "trained"."""
        hooks.end_of_testing_hook(t)
        row = pb_cf.try_getting_db_count(keeper, group) + 1
        keeper.update_records(
            {"trained_status": "trained"},
            global_iteration=row,
            input_group_name_for_non_objects=group,
        )
        keeper.save_records()

    with pytest.raises(TypeError, match="not supported between"):
        pb_eval_ensemble_records()
    keeper.record_writer.records.clear()
    compat.install(["ensemble_record_rows"])
    pb_eval_ensemble_records()
    pb_eval_ensemble_records()  # a second ensemble evaluation: a second row
    rows = keeper.query(f"SELECT * FROM {group} ORDER BY id")
    assert [(r["epoch"], r["trained_status"]) for r in rows] == [
        ("trained", "trained")
    ] * 2
    assert rows[0]["mean_average_precision_at_r_level0"] == 0.5
