"""Tests for pml_soproxy.trunks: tiny DeiTs, CPU only, never the network."""

import random
import socket
import time

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from pml_soproxy.trunks import (
    Trunk,
    create_transforms,
    create_trunk,
    deit_trunk,
    get_transforms,
    weights,
)

TINY = dict(img_size=32, patch_size=8, depth=2, embed_dim=64, num_heads=2)
DEIT = "deit_tiny_patch16_224"
DEIT_DISTILLED = "deit_tiny_distilled_patch16_224"
BOTH = [DEIT, DEIT_DISTILLED]


@pytest.fixture(autouse=True)
def no_network(monkeypatch, tmp_path):
    """Empty HF / torch.hub caches, offline hub, and sockets that refuse."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)

    def refuse(*args, **kwargs):
        raise OSError("network access attempted in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def source_model(name, seed=0, num_classes=0, **overrides):
    """A tiny timm model with seeded random weights, in eval mode."""
    torch.manual_seed(seed)
    kwargs = dict(TINY, **overrides)
    return timm.create_model(name, num_classes=num_classes, **kwargs).eval()


def pooled(model, x):
    """timm's pooled (pre-logits) feature, whatever the model's head."""
    with torch.no_grad():
        return model.forward_head(model.forward_features(x), pre_logits=True)


def images(n=2, size=32, seed=123):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def seeded(transform, img, seed):
    """Apply a random transform under a seed (timm uses `random` and torch)."""
    random.seed(seed)
    torch.manual_seed(seed)
    return transform(img)


def pil_image(height=40, width=50, seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3))
    return Image.fromarray(pixels.astype(np.uint8))


###################
### tiny trunks ###
###################


@pytest.mark.parametrize("name", BOTH)
def test_tiny_trunk_output(name):
    trunk = deit_trunk(name, pretrained=False, **TINY).eval()
    assert isinstance(trunk, Trunk) and isinstance(trunk, torch.nn.Module)
    assert trunk.output_size == 64 == trunk.model.num_features
    assert trunk.data_config["input_size"] == (3, 32, 32)
    assert trunk.data_config["mean"] == timm.data.IMAGENET_DEFAULT_MEAN

    x = images(3)
    with torch.no_grad():
        out = trunk(x)
    assert out.shape == (3, trunk.output_size)
    assert torch.equal(out, pooled(trunk.model, x))
    with torch.no_grad():
        tokens = trunk.model.forward_features(x)
    if name == DEIT_DISTILLED:  # cls and distillation tokens averaged
        assert trunk.model.dist_token is not None
        assert torch.allclose(out, (tokens[:, 0] + tokens[:, 1]) / 2)
    else:
        assert torch.equal(out, tokens[:, 0])


def test_create_trunk_generic_name_and_img_size():
    trunk = create_trunk(DEIT, pretrained=False, **dict(TINY, img_size=48))
    assert trunk.data_config["input_size"] == (3, 48, 48)
    assert trunk(images(1, 48)).shape == (1, 64)


def test_transforms_match_tiny_config():
    trunk = deit_trunk(DEIT, pretrained=False, **TINY)
    train_tf, eval_tf = create_transforms(trunk)
    img = pil_image()

    for tf in (train_tf, eval_tf, trunk.transforms(train=True)):
        out = tf(img)
        assert isinstance(out, torch.Tensor) and out.shape == (3, 32, 32)

    # eval: deterministic; train: random, reproducible under a seed
    assert torch.equal(eval_tf(img), eval_tf(img))
    assert torch.equal(eval_tf(img), get_transforms(trunk.data_config, False)(img))
    a, b, c = (seeded(train_tf, img, seed) for seed in (0, 1, 0))
    assert not torch.equal(a, b)
    assert torch.equal(a, c)

    # normalised with the data config's mean/std: a mean-coloured image -> ~0
    mean = np.array(trunk.data_config["mean"]) * 255
    flat = Image.fromarray(np.tile(mean.round().astype(np.uint8), (40, 50, 1)))
    assert eval_tf(flat).abs().max() < 0.05


###########################
### checkpoint loading ###
###########################


def save_checkpoint(state_dict, path):
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path))
    else:
        torch.save(state_dict, path)
    return path


FORMATS = {
    "plain.pth": lambda sd: sd,
    "fb_style.pth": lambda sd: {"model": sd, "epoch": 3},
    "lightning.pt": lambda sd: {"state_dict": sd},
    "weights.safetensors": lambda sd: sd,
    "saved_trunk.bin": lambda sd: {f"model.{k}": v for k, v in sd.items()},
}


@pytest.mark.parametrize("name", BOTH)
@pytest.mark.parametrize("filename", sorted(FORMATS))
def test_checkpoint_round_trip(tmp_path, name, filename):
    source = source_model(name, seed=0)
    path = save_checkpoint(FORMATS[filename](source.state_dict()), tmp_path / filename)
    x = images()

    torch.manual_seed(1)  # the trunk's own random init differs from the source
    trunk = deit_trunk(name, pretrained=True, checkpoint_path=path, **TINY).eval()
    with torch.no_grad():
        assert torch.equal(trunk(x), source(x))
    assert trunk.model.pretrained_cfg["file"] == str(path)
    assert "state_dict" not in trunk.model.pretrained_cfg

    torch.manual_seed(1)
    random_trunk = deit_trunk(name, pretrained=False, **TINY).eval()
    with torch.no_grad():
        assert not torch.allclose(random_trunk(x), source(x))


@pytest.mark.parametrize("name", BOTH)
def test_checkpoint_with_classifier_head(tmp_path, name):
    source = source_model(name, seed=0, num_classes=10)
    state_dict = source.state_dict()
    assert state_dict["head.weight"].shape == (10, 64)
    path = save_checkpoint({"model": state_dict}, tmp_path / "with_head.pth")

    trunk = deit_trunk(name, checkpoint_path=path, **TINY).eval()
    x = images()
    with torch.no_grad():
        assert trunk(x).shape == (2, 64)
        assert torch.equal(trunk(x), pooled(source, x))
    assert isinstance(trunk.model.head, torch.nn.Identity)


@pytest.mark.parametrize("name", BOTH)
def test_position_embedding_resampled(tmp_path, name):
    source = source_model(name, seed=0)  # 32 px: 4x4 patches
    path = save_checkpoint(source.state_dict(), tmp_path / "at32.safetensors")

    trunk = deit_trunk(name, checkpoint_path=path, **dict(TINY, img_size=48))
    prefix = 2 if name == DEIT_DISTILLED else 1
    assert trunk.model.pos_embed.shape == (1, prefix + 36, 64)  # 6x6 patches
    assert torch.equal(trunk.model.pos_embed[:, :prefix], source.pos_embed[:, :prefix])
    assert torch.equal(trunk.model.cls_token, source.cls_token)
    assert trunk.data_config["input_size"] == (3, 48, 48)
    assert trunk(images(2, 48)).shape == (2, 64)
    train_tf, eval_tf = create_transforms(trunk)
    assert eval_tf(pil_image()).shape == train_tf(pil_image()).shape == (3, 48, 48)


######################
### cached weights ###
######################


def fake_hf_cache(hf_home, repo_id, filename, state_dict):
    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    return save_checkpoint(state_dict, repo / "snapshots" / commit / filename)


def test_pretrained_from_local_hf_cache(tmp_path):
    source = source_model(DEIT, seed=0, num_classes=1000)
    repo_id = timm.models.get_pretrained_cfg(DEIT).hf_hub_id
    path = fake_hf_cache(
        tmp_path / "hf_home", repo_id, "model.safetensors", source.state_dict()
    )

    trunk = deit_trunk(DEIT, pretrained=True, **TINY).eval()
    assert trunk.model.pretrained_cfg["file"] == str(path)
    x = images()
    assert torch.equal(trunk(x).detach(), pooled(source, x))


def test_pretrained_from_torch_hub_cache(tmp_path):
    source = source_model(DEIT_DISTILLED, seed=0)
    url = timm.models.get_pretrained_cfg(DEIT_DISTILLED).url
    checkpoints = tmp_path / "torch_home" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    path = save_checkpoint(
        {"model": source.state_dict()}, checkpoints / url.split("/")[-1]
    )

    trunk = deit_trunk(DEIT_DISTILLED, **TINY).eval()
    assert trunk.model.pretrained_cfg["file"] == str(path)
    x = images()
    assert torch.equal(trunk(x).detach(), pooled(source, x))


##############
### errors ###
##############


def test_missing_checkpoint_file(tmp_path):
    path = tmp_path / "nowhere" / "deit.pth"
    with pytest.raises(FileNotFoundError, match="deit.pth") as info:
        deit_trunk(DEIT, checkpoint_path=path, **TINY)
    assert info.value.filename == str(path)


def test_checkpoint_of_other_architecture(tmp_path):
    other = source_model(DEIT_DISTILLED, embed_dim=32)
    path = save_checkpoint(other.state_dict(), tmp_path / "dim32.pth")
    with pytest.raises(RuntimeError) as info:
        deit_trunk(DEIT, checkpoint_path=path, **TINY)
    message = str(info.value)
    assert str(path) in message and DEIT in message
    assert "shape mismatch" in message and "[1, 1, 32] vs model [1, 1, 64]" in message
    assert "unexpected key(s): dist_token" in message
    assert len(message) < 800 and "\n" not in message


def test_checkpoint_with_unrelated_keys(tmp_path):
    path = save_checkpoint({"fc.weight": torch.zeros(3, 3)}, tmp_path / "junk.pth")
    with pytest.raises(RuntimeError, match=r"junk\.pth.*missing key\(s\)") as info:
        deit_trunk(DEIT, checkpoint_path=path, **TINY)
    assert "cls_token" in str(info.value) and "fc.weight" in str(info.value)


def test_pretrained_not_cached_fails_fast():
    start = time.perf_counter()
    with pytest.raises(RuntimeError, match="checkpoint_path") as info:
        deit_trunk()
    assert time.perf_counter() - start < 10
    assert "not in the local cache" in str(info.value)
    assert "deit_small_distilled_patch16_224" in str(info.value)


def go_online(monkeypatch):
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


def test_online_but_unreachable_fails_fast(monkeypatch):
    go_online(monkeypatch)  # the autouse fixture still refuses every socket
    start = time.perf_counter()
    with pytest.raises(RuntimeError, match="checkpoint_path") as info:
        deit_trunk(DEIT, **TINY)
    assert time.perf_counter() - start < 10
    assert isinstance(info.value.__cause__, ConnectionError)


def test_download_failure_becomes_one_sentence(monkeypatch):
    import huggingface_hub

    calls = []

    def unreachable(*args, **kwargs):
        calls.append(args)
        raise huggingface_hub.errors.LocalEntryNotFoundError("connection error")

    go_online(monkeypatch)
    monkeypatch.setattr(weights, "_reachable", lambda url, timeout=3.0: True)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", unreachable)
    with pytest.raises(RuntimeError, match="checkpoint_path") as info:
        deit_trunk(DEIT, **TINY)
    assert isinstance(
        info.value.__cause__, huggingface_hub.errors.LocalEntryNotFoundError
    )
    assert len(calls) == 1  # no second (back-off) round for the .bin file


@pytest.mark.parametrize("name", ["deit_smal_patch16_224", "not_a_model"])
def test_bad_model_name(name):
    with pytest.raises(ValueError, match="not a timm model") as info:
        deit_trunk(name, pretrained=False)
    assert name in str(info.value)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="num_classes"):
        deit_trunk(DEIT, pretrained=False, num_classes=10, **TINY)
    with pytest.raises(ValueError, match="pretrained=False"):
        deit_trunk(DEIT, pretrained=False, checkpoint_path=tmp_path / "x.pth")


class _Payload:
    """A pickled object: reading it would need a full (unsafe) unpickle."""


def test_checkpoint_is_never_unpickled(tmp_path):
    state_dict = source_model(DEIT).state_dict()
    path = tmp_path / "pickled.pth"
    torch.save({"model": state_dict, "payload": _Payload()}, path)
    with pytest.raises(RuntimeError, match=r"Could not read checkpoint .*pickled\.pth"):
        deit_trunk(DEIT, checkpoint_path=path, **TINY)
