"""Exports: timm loads the safetensors strictly, ONNX matches torch under
onnxruntime to 1e-4, and the exported model reproduces the run's test Recall@1."""

import json
import os

import numpy as np
import pytest
import torch

from pml_soproxy import cli
from pml_soproxy.retrieval import export_model, load_model


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("export"))
    return out, export_model(run_dir, "safetensors", out)


def test_safetensors_loads_into_plain_timm(run_dir, exported):
    import timm
    from safetensors.torch import load_file

    out, card = exported
    model = timm.create_model(card["model_name"], pretrained=False,
                              num_classes=card["num_classes"],
                              **card["trunk_kwargs"]).eval()  # fmt: skip
    model.load_state_dict(load_file(os.path.join(out, "model.safetensors")))  # strict
    run = load_model(run_dir, device="cpu", precision="fp32")
    x = torch.rand(4, *card["data_config"]["input_size"])
    with torch.no_grad():
        np.testing.assert_allclose(
            torch.nn.functional.normalize(model(x), dim=1).numpy(),
            run.net(x).numpy(), atol=1e-6,
        )  # fmt: skip
    assert card["num_classes"] == 16 and card["embedding_size"] == 16


def test_exported_model_reproduces_the_test_recall(run_dir, exported):
    from pml_soproxy.training import builder
    from pml_soproxy.training.config import config_from_dict

    out, card = exported
    model = load_model(out, device="cpu", precision="fp32")  # the export, not the run
    config = config_from_dict(card["config"], "the model card")
    test = builder.create_dataset(config, "test", transform=model.transform)
    x = torch.stack([test[i][0] for i in range(len(test))])
    with torch.no_grad():
        emb = model.net(x)
    calc = builder.build_calculator(config, torch.device("cpu"))
    acc = calc.get_accuracy(emb, torch.as_tensor(test.labels), emb,
                            torch.as_tensor(test.labels), True)  # fmt: skip
    results = json.load(open(os.path.join(run_dir, "results.json")))
    assert acc["recall_at_1"] == pytest.approx(results["test"]["recall_at_1"], abs=1e-9)
    assert card["metrics"]["recall_at_1"] == results["test"]["recall_at_1"]


@pytest.mark.slow
def test_onnx_matches_torch_under_onnxruntime(run_dir, tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    out = str(tmp_path / "x")
    assert cli.main(["export", run_dir, "--format", "onnx", "--out-dir", out]) == 0
    assert "max |difference| vs torch" in capsys.readouterr().out
    session = ort.InferenceSession(os.path.join(out, "model.onnx"),
                                   providers=["CPUExecutionProvider"])  # fmt: skip
    run = load_model(run_dir, device="cpu", precision="fp32")
    x = torch.rand(5, *run.info["data_config"]["input_size"])  # another batch size
    got = session.run(None, {"images": x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, run.net(x).numpy(), atol=1e-4)
    card = json.load(open(os.path.join(out, "model_card.json")))
    assert card["exports"]["onnx"]["check"]["max_abs_diff"] <= 1e-4
    # a second format into the same folder keeps the first in the card
    assert cli.main(["export", run_dir, "--format", "torchscript", "--out-dir", out]) == 0
    card = json.load(open(os.path.join(out, "model_card.json")))
    assert set(card["exports"]) == {"onnx", "torchscript"}
    text = open(os.path.join(out, "MODEL_CARD.md")).read()
    assert "recall_at_1" in text and "random init" in text


def test_export_bad_inputs(run_dir, exported, tmp_path, capsys):
    out, _ = exported
    assert cli.main(["export", str(tmp_path / "none")]) == 2
    assert "no run folder or model file" in capsys.readouterr().err
    assert cli.main(["export", out]) == 2
    assert "already an export" in capsys.readouterr().err
