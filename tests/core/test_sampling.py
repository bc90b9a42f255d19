"""Latent MC sampling: shapes, grouping, per-sample DropBlock semantics, stop-at-hook, flags,
fast/naive equivalence (exact where the random streams match, statistical otherwise), fallbacks,
chunking and errors."""

from __future__ import annotations

import warnings
from collections import OrderedDict

import pytest
import torch
from dropblock import DropBlock2D, DropBlock3D
from scipy.stats import ks_2samp
from torch import nn

from lsea_monitor import hooks
from lsea_monitor.entropy import entropy_per_dim
from lsea_monitor.errors import InputValidationError, ModelLoadError
from lsea_monitor.hooks import Hook, enable_mc_dropout, register_dropout_type
from lsea_monitor.sampling import (
    LatentMCSampler,
    _dropblock_per_sample,
    _timm_dropblock_per_sample,
)
from offline_calibration.deeplab import DeepLabV3PlusDropBlock

STRATEGIES = ("fast", "naive")


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------
class _Counter(nn.Module):
    """Identity that counts its calls: proves what runs after the hook."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x


def _constant_images(values: list[float], size: int = 16) -> torch.Tensor:
    """(B, 3, size, size) images, image b constant at values[b]."""
    return torch.tensor(values).view(-1, 1, 1, 1).expand(-1, 3, size, size).contiguous()


def _dropblock_on_input(block_size: int = 3, drop_prob: float = 0.3) -> nn.Module:
    """DropBlock applied to the image itself: with per-sample rescaling, the spatial mean of every
    sample of a constant image c is exactly c (whole-batch rescaling would scatter it)."""
    return nn.Sequential(OrderedDict(
        drop=DropBlock2D(drop_prob=drop_prob, block_size=block_size),
        latent=nn.Identity(),
        after=_Counter(),
    ))


class _SkipNet(nn.Module):
    """A skip connection from before the stochastic module merges before the hooked layer."""

    def __init__(self, stochastic: nn.Module | None = None) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.drop = stochastic if stochastic is not None else DropBlock2D(drop_prob=0.3, block_size=3)
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.latent = nn.Identity()
        self.head = _Counter()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stem(x)
        y = self.conv(self.drop(s))
        return self.head(self.latent(torch.cat([y, s], dim=1)))


class _ChainNet(nn.Module):
    """Stochastic module, then more layers, then the hook: the generic fast path (expansion)."""

    def __init__(self, stochastic: nn.Module) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = stochastic
        self.conv = nn.Conv2d(4, 6, 3, padding=1)
        self.latent = nn.Identity()
        self.head = _Counter()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.latent(self.conv(self.drop(self.bn(self.stem(x))))))


@pytest.fixture(scope="module")
def deeplab() -> DeepLabV3PlusDropBlock:
    """Random-weight DeepLabV3+ (ResNet-18); 64 x 128 inputs give a 4 x 8 deepest feature map, so
    the block is 3 (a block of 12 would cover the whole map) and p = 0.5 for visible spread."""
    torch.manual_seed(0)
    model = DeepLabV3PlusDropBlock(
        "resnet18", classes=5, block_size=3, drop_prob=0.5, decoder_aspp_dropout=0.0
    )
    return model.eval()


def _image(seed: int, batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, 64, 128, generator=torch.Generator().manual_seed(seed))


def _original_samples(model: nn.Module, layer: nn.Module, x: torch.Tensor, m: int) -> torch.Tensor:
    """The original package's loop: M full passes with dropout in train mode, hooked output
    averaged over H then W, concatenated pass-major (correct for B = 1 only)."""
    enable_mc_dropout(model)
    rows = []
    try:
        with Hook(layer) as hook, torch.no_grad():
            for _ in range(m):
                model(x)
                rows.append(torch.mean(torch.mean(hook.output, dim=2), dim=2))
    finally:
        model.eval()
    return torch.cat(rows, dim=0)  # (M * B, C)


def _rng_stream_is_shape_independent() -> bool:
    """True if CPU ``rand(M, H, W)`` gives the same numbers as M calls of ``rand(1, H, W)``."""
    torch.manual_seed(0)
    a = torch.rand(8, 4, 8)
    torch.manual_seed(0)
    b = torch.cat([torch.rand(1, 4, 8) for _ in range(8)])
    return torch.equal(a, b)


# --------------------------------------------------------------------------------------------
# Shapes, grouping, per-sample semantics
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("batch", [1, 2, 3])
def test_shape_grouping_and_per_sample_rescaling(strategy: str, batch: int) -> None:
    values = [1.0, 10.0, 100.0][:batch]
    model = _dropblock_on_input()
    sampler = LatentMCSampler(model, "latent", 6, strategy=strategy)
    out = sampler.sample(_constant_images(values))
    assert out.shape == (batch, 6, 3)
    assert sampler.strategy_used_ == strategy and sampler.fallback_reason_ is None
    # Row b holds image b's samples, and each sample is rescaled by its own keep fraction.
    expected = torch.tensor(values).view(-1, 1, 1).expand_as(out)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=0)
    assert model.after.calls == 0


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_grouping_on_deeplab(deeplab: DeepLabV3PlusDropBlock, strategy: str) -> None:
    """Distinct images whose latent means differ a lot: each row sits near its own image."""
    x = torch.cat([_image(1), 5.0 * _image(2), _image(3) + 3.0])
    with Hook(deeplab.drop_block1) as hook, torch.inference_mode():
        deeplab(x)
        deterministic = hook.output.mean(dim=(2, 3))  # (3, C)
    out = LatentMCSampler(deeplab, "drop_block1", 4, strategy=strategy).sample(x)
    assert out.shape == (3, 4, 512)
    dist = torch.cdist(out.mean(dim=1), deterministic)  # (3, 3)
    assert torch.equal(dist.argmin(dim=1), torch.arange(3))


def test_naive_batch_equals_per_image_in_distribution() -> None:
    """Naive with B = 2 vs separate B = 1 runs of each image: same per-image distribution."""
    torch.manual_seed(0)
    model = _ChainNet(DropBlock2D(drop_prob=0.4, block_size=3)).eval()
    x = torch.randn(2, 3, 12, 12)
    m = 300
    torch.manual_seed(1)
    batched = LatentMCSampler(model, "latent", m, strategy="naive").sample(x)
    for b in range(2):
        torch.manual_seed(10 + b)
        single = LatentMCSampler(model, "latent", m, strategy="naive").sample(x[b : b + 1])[0]
        for c in range(batched.shape[-1]):
            assert ks_2samp(batched[b, :, c].round(decimals=4), single[:, c].round(decimals=4)).pvalue > 1e-3
    # The two images differ: the samples of row 0 are not those of image 1.
    assert ks_2samp(batched[0, :, 0], batched[1, :, 0]).pvalue < 1e-6


# --------------------------------------------------------------------------------------------
# Exact equality with the original where the random streams match
# --------------------------------------------------------------------------------------------
def test_naive_batch1_equals_original_seeded(deeplab: DeepLabV3PlusDropBlock) -> None:
    x = _image(4)
    torch.manual_seed(123)
    reference = _original_samples(deeplab, deeplab.drop_block1, x, 6)
    torch.manual_seed(123)
    out = LatentMCSampler(deeplab, "drop_block1", 6, strategy="naive").sample(x)
    assert torch.equal(out[0], reference)


def test_fast_batch1_equals_naive_seeded(deeplab: DeepLabV3PlusDropBlock) -> None:
    if not _rng_stream_is_shape_independent():
        pytest.skip("this torch's CPU rand stream depends on the tensor shape")
    x = _image(5)
    torch.manual_seed(7)
    naive = LatentMCSampler(deeplab, "drop_block1", 8, strategy="naive").sample(x)
    torch.manual_seed(7)
    fast = LatentMCSampler(deeplab, "drop_block1", 8, strategy="fast").sample(x)
    torch.testing.assert_close(fast, naive, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("block_size", [2, 3, 4])
def test_dropblock_per_sample_equals_library_for_one_sample(block_size: int) -> None:
    for module, shape in ((DropBlock2D(0.3, block_size), (1, 4, 9, 10)),
                          (DropBlock3D(0.3, block_size), (1, 2, 6, 7, 8))):
        module.train()
        x = torch.randn(shape)
        torch.manual_seed(3)
        expected = module(x)
        torch.manual_seed(3)
        assert torch.equal(_dropblock_per_sample(module, x), expected)


@pytest.mark.parametrize("kwargs", [
    {"block_size": 3}, {"block_size": 4}, {"block_size": 3, "couple_channels": False},
    {"block_size": 5, "with_noise": True}, {"block_size": 3, "scale_by_keep": False},
])
def test_timm_dropblock_per_sample_equals_library_for_one_sample(kwargs: dict) -> None:
    layers = pytest.importorskip("timm.layers")
    module = layers.DropBlock2d(drop_prob=0.3, **kwargs).train()
    x = torch.randn(1, 4, 9, 10)
    torch.manual_seed(3)
    expected = module(x)
    torch.manual_seed(3)
    torch.testing.assert_close(_timm_dropblock_per_sample(module, x), expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_timm_dropblock_per_sample_rescaling(strategy: str) -> None:
    layers = pytest.importorskip("timm.layers")
    model = nn.Sequential(OrderedDict(drop=layers.DropBlock2d(drop_prob=0.3, block_size=3),
                                      latent=nn.Identity()))
    sampler = LatentMCSampler(model, "drop", 5, strategy=strategy)
    out = sampler.sample(_constant_images([2.0, 7.0]))
    assert sampler.strategy_used_ == strategy
    torch.testing.assert_close(out, torch.tensor([2.0, 7.0]).view(2, 1, 1).expand(2, 5, 3),
                               rtol=1e-5, atol=0)


# --------------------------------------------------------------------------------------------
# Statistical equivalence of fast and naive on the reference network
# --------------------------------------------------------------------------------------------
def _compare(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """Statistics comparing two (K, M, C) sets of latent samples of one image.

    Fully kept samples are exact duplicates (an atom of the distribution) whose value differs
    between the paths by float rounding only, so values are rounded before the KS tests.
    """
    k, m, c = a.shape
    fa, fb = a.reshape(-1, c).double(), b.reshape(-1, c).double()
    n = fa.shape[0]
    va, vb = fa.var(0), fb.var(0)
    live = (va + vb) > 0  # ReLU channels that are zero everywhere carry no information
    z = (fa.mean(0) - fb.mean(0))[live] / ((va + vb)[live] / n).sqrt()
    proj = torch.randn(c, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ks_proj = min(
        ks_2samp((fa @ proj[:, j]).round(decimals=3), (fb @ proj[:, j]).round(decimals=3)).pvalue
        for j in range(proj.shape[1])
    )
    ha, hb = entropy_per_dim(a), entropy_per_dim(b)  # (K, C): one block of M samples per row
    ea, eb = ha.mean(1), hb.mean(1)  # per-block mean entropy: iid across blocks
    return {
        "mean_abs_z": z.abs().mean().item(),
        "log_var_ratio": (va[live] / vb[live]).log().abs().mean().item(),
        "ks_pooled": ks_2samp(fa.flatten().round(decimals=4), fb.flatten().round(decimals=4)).pvalue,
        "ks_projections": ks_proj,
        "entropy_z": ((ea.mean() - eb.mean()) / (ea.var() / k + eb.var() / k).sqrt()).abs().item(),
        "ks_entropy_blocks": ks_2samp(ea, eb).pvalue,
        "entropy_per_dim_diff": (ha.mean(0) - hb.mean(0)).abs().mean().item(),
    }


def _same_distribution(s: dict[str, float]) -> bool:
    return (s["mean_abs_z"] < 1.1 and s["log_var_ratio"] < 0.25 and s["ks_pooled"] > 1e-3
            and s["ks_projections"] > 1e-3 and s["entropy_z"] < 4.0
            and s["ks_entropy_blocks"] > 1e-3 and s["entropy_per_dim_diff"] < 0.15)


def test_fast_and_naive_same_distribution(deeplab: DeepLabV3PlusDropBlock) -> None:
    """K blocks of M = 10 samples of one image (K copies in the batch), seeded differently."""
    k, m = 24, 10
    x = _image(6).expand(k, -1, -1, -1).contiguous()
    torch.manual_seed(1)
    naive = LatentMCSampler(deeplab, "drop_block1", m, strategy="naive").sample(x)
    torch.manual_seed(2)
    sampler = LatentMCSampler(deeplab, "drop_block1", m, strategy="fast")
    fast = sampler.sample(x)
    assert sampler.strategy_used_ == "fast"
    assert torch.isfinite(naive).all() and torch.isfinite(fast).all()
    stats = _compare(naive, fast)
    assert _same_distribution(stats), stats

    # Negative control: the library's whole-batch rescaling on K*M draws must be rejected.
    with torch.inference_mode():
        feature = deeplab.encoder(x[:1])[-1]
        deeplab.drop_block1.train()
        torch.manual_seed(3)
        try:
            coupled = deeplab.drop_block1(feature.repeat(k * m, 1, 1, 1)).mean(2).mean(2)
        finally:
            deeplab.eval()
    control = _compare(naive, coupled.view(k, m, -1))
    assert not _same_distribution(control), control


# --------------------------------------------------------------------------------------------
# Stop at the hook, flags
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_nothing_after_the_hook_runs(deeplab: DeepLabV3PlusDropBlock, strategy: str) -> None:
    counters = {name: 0 for name in ("decoder", "segmentation_head")}
    handles = [
        getattr(deeplab, name).register_forward_pre_hook(
            lambda *_, n=name: counters.__setitem__(n, counters[n] + 1))
        for name in counters
    ]
    try:
        LatentMCSampler(deeplab, "drop_block1", 3, strategy=strategy).sample(_image(7, batch=2))
    finally:
        for h in handles:
            h.remove()
    assert counters == {"decoder": 0, "segmentation_head": 0}


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("initial", ["train", "eval", "mixed"])
def test_flags_restored_and_batchnorm_eval(
    deeplab: DeepLabV3PlusDropBlock, strategy: str, initial: str
) -> None:
    deeplab.train(initial == "train")
    if initial == "mixed":
        deeplab.encoder.layer2.train()
    before = [m.training for m in deeplab.modules()]
    bn = [m for m in deeplab.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    stats_before = [m.running_mean.clone() for m in bn]
    seen: list[bool] = []
    handles = [m.register_forward_pre_hook(lambda mod, _: seen.append(mod.training)) for m in bn]
    try:
        LatentMCSampler(deeplab, "drop_block1", 2, strategy=strategy).sample(_image(8))
    finally:
        for h in handles:
            h.remove()
        after = [m.training for m in deeplab.modules()]
        deeplab.eval()
    assert after == before
    assert seen and not any(seen)  # every BatchNorm ran in eval mode
    assert all(torch.equal(a, m.running_mean) for a, m in zip(stats_before, bn))


# --------------------------------------------------------------------------------------------
# Generic fast path and fallbacks
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stochastic", [
    lambda: DropBlock2D(drop_prob=0.3, block_size=3), lambda: nn.Dropout2d(0.3), lambda: nn.Dropout(0.3),
])
def test_fast_expands_after_first_stochastic_module(stochastic) -> None:
    torch.manual_seed(0)
    model = _ChainNet(stochastic()).eval()
    calls: list[int] = []
    model.stem.register_forward_pre_hook(lambda _, args: calls.append(args[0].shape[0]))
    x = torch.randn(3, 3, 12, 12)
    sampler = LatentMCSampler(model, "latent", 5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = sampler.sample(x)
    assert out.shape == (3, 5, 6)
    assert sampler.strategy_used_ == "fast"
    assert calls == [3]  # the deterministic prefix ran once, on the B images only
    assert model.head.calls == 0
    assert (out.std(dim=1) > 0).any()  # the samples differ


@pytest.mark.parametrize("batch", [1, 2])
def test_fallback_on_skip_connection(batch: int) -> None:
    torch.manual_seed(0)
    model = _SkipNet().eval()
    sampler = LatentMCSampler(model, "latent", 4)
    for _ in range(2):  # the second call uses the cached decision
        with pytest.warns(RuntimeWarning, match="would not be exact"):
            out = sampler.sample(torch.randn(batch, 3, 12, 12))
        assert out.shape == (batch, 4, 8)
        assert sampler.strategy_used_ == "naive"
        assert "expanded at 'drop'" in sampler.fallback_reason_
    assert model.head.calls == 0


def test_fallback_when_hook_before_stochastic_module() -> None:
    model = _SkipNet().eval()
    sampler = LatentMCSampler(model, "stem", 4)
    with pytest.warns(RuntimeWarning, match="would not be exact"):
        out = sampler.sample(torch.randn(2, 3, 12, 12))
    assert "not downstream" in sampler.fallback_reason_
    assert torch.equal(out, out[:, :1].expand_as(out))  # all samples identical


def test_warning_when_model_has_no_dropout() -> None:
    model = nn.Sequential(OrderedDict(conv=nn.Conv2d(3, 2, 1), latent=nn.Identity()))
    with pytest.warns(RuntimeWarning, match="no active dropout-like module"):
        LatentMCSampler(model, "latent", 3, strategy="naive").sample(torch.randn(1, 3, 4, 4))


def test_unknown_stochastic_type_falls_back_to_single_image_passes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(hooks, "_REGISTRY", {})

    class BatchNoise(nn.Module):
        """Couples the batch: every sample is shifted by one draw shared by the batch."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + torch.randn(()) if self.training else x

    register_dropout_type(BatchNoise)
    model = _ChainNet(BatchNoise()).eval()
    rows: list[int] = []
    model.stem.register_forward_pre_hook(lambda _, args: rows.append(args[0].shape[0]))
    sampler = LatentMCSampler(model, "latent", 3)
    with pytest.warns(RuntimeWarning, match="per-sample implementation"):
        out = sampler.sample(torch.randn(2, 3, 8, 8))
    assert out.shape == (2, 3, 6) and sampler.strategy_used_ == "naive"
    assert rows[0] == 2 and set(rows[1:]) == {1}  # after the probe: one image per pass
    rows.clear()
    LatentMCSampler(model, "latent", 3, strategy="naive").sample(torch.randn(2, 3, 8, 8))
    assert rows == [1] * 6


# --------------------------------------------------------------------------------------------
# Chunking
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layer", ["drop", "latent"])  # direct DropBlock path / expansion path
@pytest.mark.parametrize("chunk_size", [1, 3, 5, 100])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_chunking_keeps_grouping(layer: str, chunk_size: int, strategy: str) -> None:
    values = [1.0, 2.0, 3.0]
    sampler = LatentMCSampler(_dropblock_on_input(), layer, 4, strategy=strategy, chunk_size=chunk_size)
    for _ in range(2):  # second call: cached plan
        out = sampler.sample(_constant_images(values))
        assert sampler.strategy_used_ == strategy
        torch.testing.assert_close(out, torch.tensor(values).view(3, 1, 1).expand(3, 4, 3),
                                   rtol=1e-5, atol=0)


def test_chunked_fallback_is_grouped() -> None:
    torch.manual_seed(0)
    model = _SkipNet().eval()
    x = torch.randn(3, 3, 8, 8)
    with pytest.warns(RuntimeWarning):
        out = LatentMCSampler(model, "latent", 4, chunk_size=3).sample(x)
    # The skip half of the latent (channels 4..7) is deterministic: it identifies the image.
    with Hook(model.stem) as hook, torch.inference_mode():
        model(x)
        skip = hook.output.mean(dim=(2, 3))
    torch.testing.assert_close(out[..., 4:], skip[:, None].expand(3, 4, 4))


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------
def test_errors(deeplab: DeepLabV3PlusDropBlock) -> None:
    with pytest.raises(ModelLoadError, match="drop_blok1.*drop_block1"):
        LatentMCSampler(deeplab, "drop_blok1", 4)
    for bad in (1, 0, True, 2.0):
        with pytest.raises(InputValidationError, match="mc_samples"):
            LatentMCSampler(deeplab, "drop_block1", bad)  # type: ignore[arg-type]
    with pytest.raises(InputValidationError, match="strategy"):
        LatentMCSampler(deeplab, "drop_block1", 4, strategy="slow")  # type: ignore[arg-type]
    with pytest.raises(InputValidationError, match="chunk_size"):
        LatentMCSampler(deeplab, "drop_block1", 4, chunk_size=0)
    sampler = LatentMCSampler(deeplab, "drop_block1", 4)
    with pytest.raises(InputValidationError, match=r"\(B, 3, H, W\)"):
        sampler.sample(torch.randn(3, 64, 128))
    with pytest.raises(InputValidationError, match="floating-point"):
        sampler.sample(torch.zeros(1, 3, 64, 128, dtype=torch.uint8))
    with pytest.raises(InputValidationError, match="torch.Tensor"):
        sampler.sample([[0.0]])  # type: ignore[arg-type]


def test_error_when_hooked_layer_does_not_run() -> None:
    model = _ChainNet(nn.Dropout(0.2))
    model.unused = nn.Identity()
    with pytest.raises(ModelLoadError, match="did not run"):
        LatentMCSampler(model, "unused", 3, strategy="naive").sample(torch.randn(1, 3, 8, 8))
    assert all(m.training for m in model.modules())  # flags restored after the error too
