"""``loss``: SO on every PML loss that owns class weights, through the train door.

References: the unmodified PML classes (so_weight 0 must be exactly them), and the
penalty written as a plain float64 loop over the class-weight rows (the layout PML
hands to its weight regulariser), never through our regulariser."""

import json

import pytest
import torch
from pytorch_metric_learning import losses

from pml_soproxy import cli
from pml_soproxy.training import builder, checkpoints
from pml_soproxy.training.config import (
    LOSS_NAMES,
    LOSS_OPTIONS,
    ConfigError,
    config_from_dict,
    load_config,
)
from tests.references import so_rows_loop, so_rows_naive

from .helpers import TRAIN_FLAGS

NUM_CLASSES, EMBEDDING_SIZE, CENTERS = 6, 8, 3
TINY = "{img_size: 16, patch_size: 8, depth: 1, embed_dim: 16, num_heads: 1}"
#: the PML class each name must build, and the attribute holding its weights
PML = {
    "proxy_anchor": (losses.ProxyAnchorLoss, "proxies"),
    "proxy_nca": (losses.ProxyNCALoss, "proxies"),
    "normalized_softmax": (losses.NormalizedSoftmaxLoss, "W"),
    "soft_triple": (losses.SoftTripleLoss, "fc"),
    "arcface": (losses.ArcFaceLoss, "W"),
    "cosface": (losses.CosFaceLoss, "W"),
}
#: hyper-parameters away from the defaults, so that passing them on is tested too
VALUES = {
    "margin": 0.2, "alpha": 16.0, "proxy_nca_softmax_scale": 3.0,
    "normalized_softmax_temperature": 0.1, "soft_triple_centers_per_class": CENTERS,
    "soft_triple_la": 10.0, "soft_triple_gamma": 0.2, "soft_triple_margin": 0.05,
    "arcface_margin": 20.0, "arcface_scale": 16.0, "cosface_margin": 0.2,
    "cosface_scale": 16.0,
}  # fmt: skip


def loss_config(name, so_weight, **extra):
    values = {k: VALUES[k] for k in LOSS_OPTIONS[name]}
    return load_config(
        "digits", dict(loss=name, so_weight=so_weight, **values, **extra)
    )


def built(name, so_weight, seed=0):
    torch.manual_seed(seed)
    return builder.build_loss(
        loss_config(name, so_weight), NUM_CLASSES, EMBEDDING_SIZE, "cpu"
    )


def plain_pml(name, seed=0):
    """The unmodified PML class, same hyper-parameters, same initialisation."""
    cls, _ = PML[name]
    kwargs = {arg: VALUES[key] for key, arg in LOSS_OPTIONS[name].items()}
    torch.manual_seed(seed)
    return cls(num_classes=NUM_CLASSES, embedding_size=EMBEDDING_SIZE, **kwargs)


def forward_backward(loss, seed=1):
    generator = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(24, EMBEDDING_SIZE, generator=generator)
    embeddings.requires_grad_()
    labels = torch.arange(24) % NUM_CLASSES
    value = loss(embeddings, labels)
    value.backward()
    (weights,) = loss.parameters()
    return value.detach(), embeddings.grad, weights.grad


def test_every_loss_name_is_a_pml_weight_regularizer_loss():
    assert set(LOSS_NAMES) == set(PML)
    for cls, _ in PML.values():
        assert issubclass(cls, losses.mixins.WeightRegularizerMixin)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_so_weight_zero_is_exactly_the_plain_pml_loss(name):
    ours, theirs = built(name, 0.0), plain_pml(name)
    assert isinstance(ours, PML[name][0]) and ours.weight_regularizer is None
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    for key, value in ours.state_dict().items():
        assert torch.equal(value, theirs.state_dict()[key]), key
    for a, b in zip(forward_backward(ours), forward_backward(theirs)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_so_adds_its_weight_times_the_penalty_on_the_class_weight_rows(name):
    so_weight = 0.7
    ours, plain = built(name, so_weight), built(name, 0.0)
    _, attribute = PML[name]
    weights = getattr(ours, attribute)
    # PML's layout: proxies (C, D); W (D, C); SoftTriple fc (D, C x centers)
    rows = NUM_CLASSES * (CENTERS if name == "soft_triple" else 1)
    expected_shape = (rows, EMBEDDING_SIZE) if attribute == "proxies" else (
        EMBEDDING_SIZE, rows)  # fmt: skip
    assert tuple(weights.shape) == expected_shape
    class_rows = weights if attribute == "proxies" else weights.t()
    assert torch.equal(builder.class_weights(ours), class_rows)

    value, _, grad = forward_backward(ours)
    plain_value, _, plain_grad = forward_backward(plain)
    # default reducer of the regulariser: the mean over rows; unit rows (cosine)
    penalty = so_rows_loop(class_rows, normalize=True).mean()
    assert float(value - plain_value) == pytest.approx(
        so_weight * float(penalty), rel=1e-4, abs=1e-6
    )
    wrong_axis = so_rows_loop(class_rows.t(), normalize=True).mean()
    assert abs(float(penalty - wrong_axis)) > 1e-2  # the test can tell the axis

    reference = weights.detach().double().requires_grad_()
    reference_rows = reference if attribute == "proxies" else reference.t()
    (so_weight * so_rows_naive(reference_rows, normalize=True).mean()).backward()
    torch.testing.assert_close(
        (grad - plain_grad).double(), reference.grad, rtol=1e-4, atol=1e-6
    )


def test_another_losss_hyper_parameter_is_refused_with_one_sentence():
    with pytest.raises(ConfigError) as info:
        load_config("digits", dict(loss="proxy_nca", arcface_margin=10.0))
    message = str(info.value)
    assert "'arcface_margin'" in message and "arcface" in message
    assert "'proxy_nca'" in message and "\n" not in message
    with pytest.raises(ConfigError, match="'loss' = 'arc_face'.*arcface"):
        load_config("digits", dict(loss="arc_face"))
    # a saved config of a run of another loss reads back (all keys at defaults)
    saved = load_config("digits", dict(loss="cosface", cosface_scale=30.0)).to_dict()
    assert config_from_dict(saved, "saved").cosface_scale == 30.0


@pytest.mark.slow
@pytest.mark.parametrize("so_weight", ["0", "0.5"])
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_every_loss_trains_through_the_command_line(name, so_weight, tmp_path):
    """A few iterations; the class weights optimised at the proxy learning rate; the
    loss rebuilt from the checkpoint's saved config."""
    out = tmp_path / "run"
    extra = ["--soft-triple-centers-per-class", "2"] if name == "soft_triple" else []
    args = ["train", *TRAIN_FLAGS, "--epochs", "1", "--val-fraction", "0",
            "--batch-size", "20", "--samples-per-class", "4", "--trunk-kwargs", TINY,
            "--loss", name, "--so-weight", so_weight, "--num-workers", "0",
            "--output-dir", str(out), *extra]  # fmt: skip
    seen = {}
    build_loss, build_optimization = builder.build_loss, builder.build_optimization

    def loss_spy(config, num_classes, embedding_size, device):
        seen["sizes"] = num_classes, embedding_size
        seen["loss"] = build_loss(config, num_classes, embedding_size, device)
        seen["initial"] = builder.class_weights(seen["loss"]).detach().clone()
        return seen["loss"]

    def optimization_spy(*args):
        result = build_optimization(*args)
        seen["optimizers"] = result[0]
        return result

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(builder, "build_loss", loss_spy)
        mp.setattr(builder, "build_optimization", optimization_spy)
        assert cli.main(args) == 0
    loss = seen["loss"]
    assert type(loss) is PML[name][0] or name == "proxy_anchor"
    assert isinstance(loss, PML[name][0])
    assert (loss.weight_regularizer is not None) == (so_weight != "0")
    saved = json.loads((out / "results.json").read_text())["config"]
    assert saved["loss"] == name and saved["so_weight"] == float(so_weight)
    group = seen["optimizers"]["metric_loss_optimizer"].param_groups[0]
    assert [id(p) for p in group["params"]] == [id(p) for p in loss.parameters()]
    assert group["initial_lr"] == pytest.approx(
        saved["lr"] * saved["proxy_lr_multiplier"]
    )
    assert not torch.equal(seen["initial"], builder.class_weights(loss).detach())

    state = checkpoints.load_checkpoint(str(out / checkpoints.CHECKPOINT))
    config = config_from_dict(state["meta"]["config"], "the checkpoint")
    rebuilt = builder.build_loss(config, *seen["sizes"], "cpu")
    builder.load_state(rebuilt, state["model"]["loss"], str(out), "loss")
    assert type(rebuilt) is type(loss)
    assert torch.equal(builder.class_weights(rebuilt), builder.class_weights(loss))


BAD_VALUES = {
    "loss": ["arc_face", "", 3],
    "proxy_nca_softmax_scale": [0, -1.0],
    "normalized_softmax_temperature": [0, float("inf")],
    "soft_triple_centers_per_class": [0, 2.5],
    "soft_triple_la": [0],
    "soft_triple_gamma": [0, float("nan")],
    "soft_triple_margin": [-0.1],
    "arcface_margin": [-1.0],
    "arcface_scale": [0],
    "cosface_margin": [-0.5],
    "cosface_scale": [-64.0],
}


@pytest.mark.parametrize(
    "key, value", [(k, v) for k, values in BAD_VALUES.items() for v in values]
)
def test_every_bad_loss_value_is_one_sentence_naming_key_value_and_source(key, value):
    from pml_soproxy.training.config import resolve_config

    loss = next((n for n, keys in LOSS_OPTIONS.items() if key in keys), "proxy_nca")
    overrides = {"loss": loss, key: value} if key != "loss" else {key: value}
    with pytest.raises(ConfigError) as info:
        resolve_config("digits", overrides, flag_source=lambda k: f"flag --{k}")
    message = str(info.value)
    assert f"'{key}'" in message and f"flag --{key}" in message
    assert "\n" not in message
