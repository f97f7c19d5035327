"""Shapes, layer numbering, normalisation, gradients and state-dict keys of every encoder."""
from __future__ import annotations

import pytest
import torch

import models
from models import MODEL_NAMES, build_model

SIZES = (64, 96)


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _alexnet_shapes(size: int, feat_dim: int) -> dict[int, tuple[int, ...]]:
    """Expected per-layer output shapes (without batch) of one AlexNet branch."""
    s1 = _conv_out(_conv_out(size, 11, 4, 2), 3, 2, 0)
    s2 = _conv_out(s1, 3, 2, 0)
    s5 = _conv_out(s2, 3, 2, 0)
    return {1: (48, s1, s1), 2: (128, s2, s2), 3: (192, s2, s2), 4: (192, s2, s2),
            5: (128, s5, s5), 6: (2048,), 7: (2048,), 8: (feat_dim,)}


def _resnet_shapes(name: str, size: int, feat_dim: int) -> dict[int, tuple[int, ...]]:
    """Expected per-layer output shapes (without batch) of one ResNet branch."""
    depth, version = int(name[6:-2]), name[-2:]
    expansion = 1 if depth == 18 else 4
    base = int(64 * {"v1": 0.5, "v2": 1.0, "v3": 2.0}[version])
    spatial = _conv_out(_conv_out(size, 7, 2, 3), 3, 2, 1)
    shapes = {1: (64, spatial, spatial)}
    for stage in range(4):
        if stage:
            spatial = _conv_out(spatial, 3, 2, 1)
        shapes[stage + 2] = (base * 2**stage * expansion, spatial, spatial)
    shapes[6] = (base * 8 * expansion,)
    shapes[7] = (feat_dim,)
    return shapes


def _expected(name: str, size: int, feat_dim: int) -> dict[int, tuple[int, ...]]:
    return _alexnet_shapes(size, feat_dim) if name == "alexnet" else _resnet_shapes(name, size, feat_dim)


def test_model_names() -> None:
    assert len(MODEL_NAMES) == 10
    assert MODEL_NAMES[0] == "alexnet"
    assert {f"resnet{d}v{w}" for d in (18, 50, 101) for w in (1, 2, 3)} == set(MODEL_NAMES[1:])


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_shapes_every_layer_meta(name: str) -> None:
    """Every layer at two input sizes, computed on the meta device (no real arithmetic)."""
    feat_dim = 32
    with torch.device("meta"):
        model = build_model(name, feat_dim=feat_dim).eval()
    assert model.name == name
    assert model.embedding_layer == (8 if name == "alexnet" else 7)
    for size in SIZES:
        x = torch.empty(2, 4, size, size, device="meta")
        expected = _expected(name, size, feat_dim)
        assert sorted(expected) == list(range(1, model.embedding_layer + 1))
        for layer, shape in expected.items():
            feat_rgb, feat_depth = model(x, layer)
            assert tuple(feat_rgb.shape) == (2, *shape), (name, size, layer)
            assert tuple(feat_depth.shape) == (2, *shape), (name, size, layer)
        assert tuple(model(x)[0].shape) == (2, feat_dim)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_branch_input_channels_and_feat_dim(name: str) -> None:
    with torch.device("meta"):
        model = build_model(name, feat_dim=17)
    for branch, channels in ((model.rgb_to_d, 3), (model.d_to_rgb, 1)):
        first_conv = next(m for m in branch.modules() if isinstance(m, torch.nn.Conv2d))
        assert first_conv.in_channels == channels
        head = branch.fc8[0] if name == "alexnet" else branch.fc
        assert head.out_features == 17


@pytest.fixture(scope="module", params=["alexnet", "resnet18v1"])
def cpu_model(request: pytest.FixtureRequest) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(request.param, feat_dim=24)


def test_embeddings_unit_norm_and_zero_input(cpu_model: torch.nn.Module) -> None:
    cpu_model.eval()
    with torch.no_grad():
        feat_rgb, feat_depth = cpu_model(torch.randn(3, 4, 64, 64))
        assert feat_rgb.shape == feat_depth.shape == (3, 24)
        torch.testing.assert_close(feat_rgb.norm(dim=1), torch.ones(3))
        torch.testing.assert_close(feat_depth.norm(dim=1), torch.ones(3))
        zero_rgb, zero_depth = cpu_model(torch.zeros(2, 4, 64, 64))
    assert torch.isfinite(zero_rgb).all() and torch.isfinite(zero_depth).all()


def test_backward_reaches_both_branches(cpu_model: torch.nn.Module) -> None:
    cpu_model.train()
    cpu_model.zero_grad()
    feat_rgb, feat_depth = cpu_model(torch.randn(4, 4, 64, 64))
    (feat_rgb * feat_depth.roll(1, dims=0)).sum().backward()
    for branch in (cpu_model.rgb_to_d, cpu_model.d_to_rgb):
        grads = [p.grad for p in branch.parameters()]
        assert all(g is not None for g in grads)
        first_conv = next(m for m in branch.modules() if isinstance(m, torch.nn.Conv2d))
        assert first_conv.weight.grad.abs().sum() > 0
    cpu_model.zero_grad()


def test_state_dict_keys_clean(cpu_model: torch.nn.Module) -> None:
    keys = list(cpu_model.state_dict())
    assert keys and all(k.startswith(("rgb_to_d.", "d_to_rgb.")) for k in keys)
    assert not any("module." in k for k in keys)
    assert not any(isinstance(m, torch.nn.DataParallel) for m in cpu_model.modules())


def test_published_alexnet_key_layout() -> None:
    with torch.device("meta"):
        keys = set(build_model("alexnet").state_dict())
    for branch in ("rgb_to_d", "d_to_rgb"):
        for block in range(1, 6):
            assert f"{branch}.conv_block_{block}.0.weight" in keys
            assert f"{branch}.conv_block_{block}.0.bias" not in keys
            assert f"{branch}.conv_block_{block}.1.running_mean" in keys
        for fc in ("fc6", "fc7"):
            assert {f"{branch}.{fc}.0.weight", f"{branch}.{fc}.1.running_var"} <= keys
        assert f"{branch}.fc8.0.weight" in keys


def test_resnet_key_layout_matches_torchvision_names() -> None:
    with torch.device("meta"):
        model = build_model("resnet50v2")
    keys = set(model.state_dict())
    for key in ("conv1.weight", "bn1.running_mean", "layer1.0.downsample.0.weight",
                "layer4.2.conv3.weight", "layer4.2.bn3.bias", "fc.weight", "fc.bias"):
        assert f"rgb_to_d.{key}" in keys and f"d_to_rgb.{key}" in keys
    assert [len(getattr(model.rgb_to_d, f"layer{i}")) for i in range(1, 5)] == [3, 4, 6, 3]


@pytest.mark.parametrize("layer", [0, 9, -1, 2.0, True])
def test_bad_layer_raises(layer: object) -> None:
    with torch.device("meta"):
        model = build_model("alexnet")
    with pytest.raises(ValueError, match="1..8"):
        model(torch.empty(1, 4, 64, 64, device="meta"), layer)


def test_bad_layer_raises_resnet() -> None:
    with torch.device("meta"):
        model = build_model("resnet18v1")
    with pytest.raises(ValueError, match="1..7"):
        model(torch.empty(1, 4, 64, 64, device="meta"), 8)


def test_bad_input_raises() -> None:
    with torch.device("meta"):
        model = build_model("alexnet")
    with pytest.raises(ValueError, match="4, H, W"):
        model(torch.empty(1, 3, 64, 64, device="meta"))
    with pytest.raises(ValueError, match="at least 63 px"):
        model(torch.empty(1, 4, 62, 62, device="meta"))


def test_unknown_name_and_bad_feat_dim_raise() -> None:
    with pytest.raises(ValueError, match="resnet101v3") as info:
        build_model("resnet34v1")
    assert "alexnet" in str(info.value)
    with pytest.raises(ValueError, match="feat_dim"):
        build_model("alexnet", feat_dim=0)


def test_reexports() -> None:
    with torch.device("meta"):
        model = build_model("resnet18v1", 8)
    assert isinstance(model, models.TwoViewEncoder)
    assert isinstance(model.rgb_to_d, models.ResNetBranch)
