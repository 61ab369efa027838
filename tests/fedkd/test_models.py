"""Models: shapes, round-robin family assignment, param errors, gradients, determinism."""

from __future__ import annotations

import pytest
import torch

from fedkd.errors import ConfigError
from fedkd.models import MODELS, build_model, is_homogeneous, model_params, spec_for_client

SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_has_builtin_models() -> None:
    assert {"mlp", "cnn", "resnet8"} <= set(MODELS.names())


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet8"])
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_shapes(name: str, shape: tuple[int, ...]) -> None:
    model = build_model({"name": name}, shape, num_classes=10, feature_dim=24)
    assert model.feature_dim == 24
    features, logits = model(torch.randn(3, *shape))
    assert features.shape == (3, 24)
    assert logits.shape == (3, 10)
    assert torch.all(features >= 0)  # taken after the ReLU


@pytest.mark.parametrize(
    "spec",
    [
        {"name": "mlp", "hidden": []},
        {"name": "mlp", "hidden": [64, 32, 16]},
        {"name": "cnn", "channels": [8]},
        {"name": "cnn", "channels": [8, 16, 32, 64]},  # pooling stops at 1x1 on 8x8 input
        {"name": "resnet8", "width": 0.5},
    ],
)
@pytest.mark.parametrize("shape", SHAPES)
def test_params_keep_shapes(spec: dict, shape: tuple[int, ...]) -> None:
    model = build_model(spec, shape, num_classes=5, feature_dim=8)
    features, logits = model(torch.randn(2, *shape))
    assert features.shape == (2, 8) and logits.shape == (2, 5)


def test_param_count_depends_on_width() -> None:
    small = build_model({"name": "mlp", "hidden": [16]}, (1, 8, 8), 10, 32)
    large = build_model({"name": "mlp", "hidden": [64]}, (1, 8, 8), 10, 32)
    # 64*16+16 + 16*32+32 + 32*10+10 = 1040 + 544 + 330
    assert n_params(small) == 1914
    assert n_params(large) > n_params(small)
    wide = build_model({"name": "resnet8", "width": 2}, (3, 32, 32), 10, 32)
    narrow = build_model({"name": "resnet8"}, (3, 32, 32), 10, 32)
    assert n_params(wide) > n_params(narrow)


def test_round_robin_assignment() -> None:
    family = [{"name": "mlp"}, {"name": "cnn"}, {"name": "resnet8", "width": 1}]
    cfg = {"family": family, "feature_dim": 32}
    names = [spec_for_client(cfg, i)["name"] for i in range(7)]
    assert names == ["mlp", "cnn", "resnet8", "mlp", "cnn", "resnet8", "mlp"]
    assert spec_for_client(cfg, 5) == {"name": "resnet8", "width": 1}
    spec = spec_for_client(cfg, 0)
    spec["hidden"] = [1]  # a copy: the config is not mutated
    assert family[0] == {"name": "mlp"}


def test_is_homogeneous() -> None:
    one = {"family": [{"name": "mlp", "hidden": [64]}], "feature_dim": 8}
    assert is_homogeneous(one, 10)
    same = {"family": [{"name": "mlp", "hidden": [64]}, {"name": "mlp", "hidden": (64,)}]}
    assert is_homogeneous(same, 10)
    mixed = {"family": [{"name": "mlp"}, {"name": "cnn"}]}
    assert is_homogeneous(mixed, 1)
    assert not is_homogeneous(mixed, 2)
    assert not is_homogeneous({"family": [{"name": "mlp", "hidden": [64]}, {"name": "mlp"}]}, 3)


def test_omegaconf_specs_work() -> None:
    omegaconf = pytest.importorskip("omegaconf")
    cfg = omegaconf.OmegaConf.create({"family": [{"name": "mlp", "hidden": [32, 16]}]})
    spec = spec_for_client(cfg, 3)
    assert spec == {"name": "mlp", "hidden": [32, 16]} and type(spec) is dict
    model = build_model(cfg.family[0], (1, 8, 8), 10, 8)
    assert model(torch.randn(1, 1, 8, 8))[1].shape == (1, 10)


def test_unknown_model_name() -> None:
    with pytest.raises(ConfigError, match="unknown model 'vit'; known: cnn, mlp, resnet8"):
        build_model({"name": "vit"}, (1, 8, 8), 10, 8)


def test_missing_name() -> None:
    with pytest.raises(ConfigError, match="no 'name'"):
        build_model({"hidden": [8]}, (1, 8, 8), 10, 8)


def test_unknown_param_names_model_and_param() -> None:
    with pytest.raises(ConfigError, match="model 'mlp' has no param 'depth'; known: hidden"):
        build_model({"name": "mlp", "depth": 3}, (1, 8, 8), 10, 8)
    with pytest.raises(ConfigError, match="model 'resnet8' has no param 'channels'"):
        build_model({"name": "resnet8", "channels": [8]}, (3, 32, 32), 10, 8)
    assert model_params("cnn") == ["channels"]


@pytest.mark.parametrize(
    "spec, match",
    [
        ({"name": "mlp", "hidden": [0]}, "hidden must be positive ints"),
        ({"name": "mlp", "hidden": 128}, "hidden must be a list of ints"),
        ({"name": "cnn", "channels": []}, "channels must not be empty"),
        ({"name": "resnet8", "width": 0}, "width must be a positive number"),
    ],
)
def test_bad_param_values(spec: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_model(spec, (1, 8, 8), 10, 8)


def test_bad_family_and_sizes() -> None:
    with pytest.raises(ConfigError, match="non-empty list"):
        spec_for_client({"family": []}, 0)
    with pytest.raises(ConfigError, match="feature_dim must be >= 1"):
        build_model({"name": "mlp"}, (1, 8, 8), 10, 0)
    with pytest.raises(ConfigError, match=r"needs a \(C, H, W\) input_shape"):
        build_model({"name": "cnn"}, (64,), 10, 8)


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet8"])
def test_backward_reaches_every_parameter(name: str) -> None:
    model = build_model({"name": name}, (1, 8, 8), 10, 16)
    features, logits = model(torch.randn(4, 1, 8, 8))
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 3]))
    (loss + features.square().mean()).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet8"])
def test_builds_are_deterministic(name: str) -> None:
    torch.manual_seed(123)
    a = build_model({"name": name}, (3, 32, 32), 10, 16)
    torch.manual_seed(123)
    b = build_model({"name": name}, (3, 32, 32), 10, 16)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)
    torch.manual_seed(124)
    c = build_model({"name": name}, (3, 32, 32), 10, 16)
    assert not torch.equal(a.head.weight, c.head.weight)
