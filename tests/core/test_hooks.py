"""Layer lookup, output hook, dropout registry and MC-dropout switching."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from dropblock import DropBlock2D, DropBlock3D
from torch import nn

from lsea_monitor import hooks
from lsea_monitor.errors import InputValidationError, ModelLoadError
from lsea_monitor.hooks import (
    Hook,
    dropout_spec,
    enable_mc_dropout,
    get_module,
    is_dropout_module,
    register_dropout_type,
)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.drop_block1 = DropBlock2D(drop_prob=0.2, block_size=3)
        self.head = nn.Sequential(OrderedDict(drop=nn.Dropout(0.1), conv=nn.Conv2d(4, 2, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop_block1(self.encoder(x)))


class _Wrapper(nn.Module):
    """Like the LightningModule: the network under an attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.deeplab_v3plus_model = _Net()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.deeplab_v3plus_model(x)


@pytest.fixture
def clean_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hooks, "_REGISTRY", {})


def test_get_module_nested_and_indexed() -> None:
    model = _Wrapper()
    assert get_module(model, "deeplab_v3plus_model.drop_block1") is model.deeplab_v3plus_model.drop_block1
    assert get_module(model, "deeplab_v3plus_model.encoder.1") is model.deeplab_v3plus_model.encoder[1]
    assert get_module(model, "deeplab_v3plus_model.head.drop") is model.deeplab_v3plus_model.head.drop


def test_get_module_missing_lists_close_names() -> None:
    model = _Wrapper()
    with pytest.raises(ModelLoadError, match=r"'drop_block1'.*deeplab_v3plus_model\.drop_block1"):
        get_module(model, "drop_block1")
    with pytest.raises(ModelLoadError, match="top-level modules: \\['deeplab_v3plus_model'\\]"):
        get_module(model, "deeplab_v3plus_model.drop_blok1")
    with pytest.raises(ModelLoadError, match="non-empty"):
        get_module(model, "")
    with pytest.raises(InputValidationError, match="nn.Module"):
        get_module("not a model", "a")  # type: ignore[arg-type]


def test_hook_keeps_last_output_and_closes() -> None:
    model = _Net().eval()
    x1, x2 = torch.randn(1, 3, 8, 8), torch.randn(2, 3, 8, 8)
    with Hook(model.encoder) as hook:
        assert hook.output is None
        model(x1)
        model(x2)
        assert torch.equal(hook.output, model.encoder(x2))
    kept = hook.output
    model(x1)
    assert hook.output is kept  # closed: no longer updated
    hook.close()  # idempotent
    with pytest.raises(InputValidationError):
        Hook(lambda x: x)  # type: ignore[arg-type]


def test_is_dropout_module_builtin_types() -> None:
    for m in (nn.Dropout(), nn.Dropout1d(), nn.Dropout2d(), nn.Dropout3d(), nn.AlphaDropout(),
              nn.FeatureAlphaDropout(), DropBlock2D(0.1, 3), DropBlock3D(0.1, 3)):
        assert is_dropout_module(m), type(m)
    for m in (nn.Conv2d(1, 1, 1), nn.BatchNorm2d(1), nn.ReLU(), nn.Identity()):
        assert not is_dropout_module(m), type(m)
    assert dropout_spec(nn.Dropout2d()).batch_independent
    assert not dropout_spec(DropBlock2D(0.1, 3)).batch_independent


def test_is_dropout_module_timm_types() -> None:
    layers = pytest.importorskip("timm.layers")
    assert is_dropout_module(layers.DropBlock2d(0.1, 3))
    assert is_dropout_module(layers.DropPath(0.1))
    assert dropout_spec(layers.DropPath(0.1)).batch_independent
    assert not dropout_spec(layers.DropBlock2d(0.1, 3)).batch_independent


def test_register_dropout_type(clean_registry: None) -> None:
    class Noise(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + torch.randn_like(x) if self.training else x

    class SubNoise(Noise):
        pass

    assert not is_dropout_module(Noise())
    register_dropout_type(Noise, batch_independent=True)
    assert is_dropout_module(SubNoise())  # subclasses match
    assert dropout_spec(SubNoise()).batch_independent
    with pytest.raises(InputValidationError, match="nn.Module subclass"):
        register_dropout_type(int)  # type: ignore[arg-type]
    with pytest.raises(InputValidationError, match="callable"):
        register_dropout_type(Noise, per_sample_forward=3)  # type: ignore[arg-type]


def test_enable_mc_dropout_switches_only_dropouts() -> None:
    model = _Wrapper().train()
    switched = enable_mc_dropout(model)
    net = model.deeplab_v3plus_model
    assert switched == [net.drop_block1, net.head.drop]
    assert all(m.training for m in switched)
    others = [m for m in model.modules() if all(m is not s for s in switched)]
    assert others and not any(m.training for m in others)
    assert not net.encoder[1].training  # BatchNorm stays in eval mode
