"""Latent Monte-Carlo-dropout samples: the spatial mean of one layer's output over M stochastic passes.

The original runs M full forward passes per image with dropout modules in train mode, hooks one
layer and averages its output over H then W. Two strategies reproduce that distribution:

``"naive"``
    M forward passes of the whole batch, each stopped at the hooked layer (nothing after it runs).
``"fast"``
    One deterministic pass up to the first stochastic module, then the M draws of the
    stochastic part, batched. When the hooked layer itself is that first stochastic module and a
    DropBlock2D, no activation is copied at all: M block masks are drawn per image and the
    spatial mean of ``x * mask * scale`` is a masked sum (one ``bmm``).

``dropblock.DropBlock2D`` and timm's ``DropBlock2d`` rescale by the keep fraction of the whole
batch, so a batch of B > 1 images (or of B*M draws) would couple the samples. Here each sample is
rescaled by its own keep fraction, with the library's own gamma and block-mask computation, so
every batched path gives exactly the distribution of the original's batch-size-1 passes; with
B = 1 the naive strategy consumes the random stream as the original does on CPU and gives the
same numbers for the same seed.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from types import TracebackType
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from lsea_monitor.errors import InputValidationError, ModelLoadError
from lsea_monitor.hooks import (
    DropoutSpec,
    PerSampleForward,
    _lookup,
    _spec_table,
    get_module,
)

__all__ = ["LatentMCSampler", "Strategy"]

Strategy = Literal["fast", "naive"]
_STRATEGIES = ("fast", "naive")

# A "direct" drawer returns, for n draws on activation x (B, C, H, W): keep masks (n, H, W) and a
# per-draw factor f (n,) such that the spatial mean of the module's output is f * sum(x * keep).
# The optional last argument is the torch.Generator to draw from (None: the global one).
DirectDraw = Callable[..., tuple[torch.Tensor, torch.Tensor]]


# --------------------------------------------------------------------------------------------
# Per-sample DropBlock implementations (library formulas, rescaled per sample)
# --------------------------------------------------------------------------------------------
def _dropblock_keep(
    module: nn.Module, x: torch.Tensor, n: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``n`` keep masks of ``dropblock.DropBlock2D/3D`` for activation ``x``, shape (n, *spatial).

    Same draws as the library (``rand < gamma`` seeds of the same shape, then the module's own
    ``_compute_block_mask`` with its padding and even-size crop), but on ``x``'s device.
    """
    gamma = module._compute_gamma(x)
    seeds = (torch.rand(n, *x.shape[2:], device=x.device, generator=generator) < gamma).float()
    return module._compute_block_mask(seeds)


def _dropblock_per_sample(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``dropblock.DropBlock2D/3D`` forward with each sample rescaled by its own keep fraction."""
    if module.drop_prob == 0.0:
        return x
    keep = _dropblock_keep(module, x, x.shape[0])
    out = x * keep[:, None]
    kept = keep.flatten(1).sum(1).view(-1, *([1] * (x.dim() - 1)))
    # Same operation order as the library (out * numel / sum): bit-identical when B = 1.
    out = out * keep[0].numel() / kept
    return out.to(x.dtype)


def _dropblock2d_direct(
    module: nn.Module, x: torch.Tensor, n: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    if module.drop_prob == 0.0:
        keep = torch.ones(n, *x.shape[2:], device=x.device)
        return keep, torch.full((n,), 1.0 / keep[0].numel(), device=x.device)
    keep = _dropblock_keep(module, x, n, generator)
    # mean(x * keep * HW / kept) = sum(x * keep) / kept
    return keep, 1.0 / keep.flatten(1).sum(1)


def _timm_keep(
    module: nn.Module, x: torch.Tensor, n: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """timm ``drop_block_2d`` masks for ``n`` draws on ``x``: (keep, dropped), each (n, c, H, W)."""
    _, c, h, w = x.shape
    bs = module.block_size
    kh, kw = min(bs, h), min(bs, w)
    gamma = (
        float(module.gamma_scale * module.drop_prob * h * w)
        / float(kh * kw)
        / float((h - kh + 1) * (w - kw + 1))
    )
    shape = (n, 1 if module.couple_channels else c, h, w)
    dropped = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(gamma, generator=generator)
    dropped = F.max_pool2d(dropped, kernel_size=(kh, kw), stride=1, padding=(kh // 2, kw // 2))
    if kh % 2 == 0 or kw % 2 == 0:
        dropped = dropped[..., (kh + 1) % 2 :, (kw + 1) % 2 :]
    return 1.0 - dropped, dropped


def _timm_dropblock_per_sample(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """timm ``DropBlock2d`` forward with ``scale_by_keep`` computed per sample."""
    if not module.drop_prob:
        return x
    keep, dropped = _timm_keep(module, x, x.shape[0])
    if module.with_noise:
        noise = torch.empty_like(keep).normal_() * dropped
        return x * keep + noise
    if module.scale_by_keep:
        kept = keep.to(torch.float32).flatten(1).sum(1).add(1e-7)
        scale = keep[0].numel() / kept
        keep = keep * scale.to(x.dtype).view(-1, 1, 1, 1)
    return x * keep


def _timm_dropblock_direct(
    module: nn.Module, x: torch.Tensor, n: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    keep, _ = _timm_keep(module, x, n, generator)
    keep = keep[:, 0].to(torch.float32)
    if module.scale_by_keep:
        return keep, 1.0 / keep.flatten(1).sum(1).add(1e-7)
    return keep, torch.full((n,), 1.0 / keep[0].numel(), device=x.device)


def _builtin_per_sample(
    module: nn.Module,
) -> tuple[PerSampleForward | None, DirectDraw | None]:
    """Per-sample forward (and direct drawer) for the DropBlock types we know, else (None, None).

    A subclass that overrides ``forward`` has rules we cannot know: it gets none.
    """
    import sys

    db = sys.modules.get("dropblock.dropblock")
    if db is not None:
        for base, direct in ((db.DropBlock3D, None), (db.DropBlock2D, _dropblock2d_direct)):
            if isinstance(module, base):
                if type(module).forward is not base.forward:
                    return None, None
                return _dropblock_per_sample, direct
    timm_drop = sys.modules.get("timm.layers.drop")
    if timm_drop is not None and isinstance(module, timm_drop.DropBlock2d):
        # timm < 1.0.23 had other options (batchwise, fast) and another gamma: unknown rules.
        if type(module).forward is not timm_drop.DropBlock2d.forward or not hasattr(
            module, "couple_channels"
        ):
            return None, None
        direct = (
            _timm_dropblock_direct
            if module.couple_channels and not module.with_noise
            else None
        )
        return _timm_dropblock_per_sample, direct
    return None, None


# --------------------------------------------------------------------------------------------
# Pass machinery
# --------------------------------------------------------------------------------------------
class _Stop(BaseException):
    """Ends a forward pass at the hooked layer, carrying the result.

    A BaseException so that a model's own ``except Exception`` cannot swallow it and run on past
    the hook.
    """

    def __init__(self, result: torch.Tensor) -> None:
        super().__init__()
        self.result = result


class _NotExact(BaseException):
    """The fast strategy cannot give the exact distribution for this model and input."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Rechunk(BaseException):
    """The fast pass needs expanded activations larger than ``chunk_size``: rerun per chunk."""


class _PerImage(BaseException):
    """Per-image seeds were given but the pass would draw for the whole batch at once."""


@dataclass
class _Stochastic:
    """An active stochastic module and how to sample it per sample."""

    module: nn.Module
    name: str
    batch_independent: bool
    per_sample: PerSampleForward | None
    direct: DirectDraw | None

    @property
    def coupled(self) -> bool:
        """Its samples depend on each other within a batch and we know no per-sample rule."""
        return not self.batch_independent and self.per_sample is None


def _drop_rate(module: nn.Module) -> float | None:
    for attr in ("p", "drop_prob"):
        value = getattr(module, attr, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


class _MCSession:
    """MC-dropout mode for the duration of one ``sample`` call; restores every flag on exit.

    Modules with a per-sample rule are put in eval mode (their own forward is then the identity)
    and a forward hook registered first applies the per-sample rule to their output.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.stochastic: list[_Stochastic] = []
        self._flags: list[tuple[nn.Module, bool]] = []
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> _MCSession:
        # Once per frame: one traversal, one spec lookup per module type, and flags written only
        # where they change (nn.Module.__setattr__ and recursive train() calls cost ~3 ms per
        # frame for a ResNet-101 otherwise). Same effect as enable_mc_dropout().
        named = list(self.model.named_modules())
        self._flags = [(m, m.training) for _, m in named]
        try:
            if any(flag for _, flag in self._flags):
                self.model.eval()
            table = _spec_table()
            specs: dict[type, DropoutSpec | None] = {}
            for name, m in named:
                kind = type(m)
                if kind not in specs:
                    specs[kind] = _lookup(table, m)
                spec = specs[kind]
                if spec is None:
                    continue
                m.training = True  # every dropout-like module, as enable_mc_dropout
                if _drop_rate(m) == 0.0:
                    continue  # p = 0 is deterministic
                per_sample, direct = spec.per_sample_forward, None
                if per_sample is None and not spec.batch_independent:
                    per_sample, direct = _builtin_per_sample(m)
                st = _Stochastic(m, name, spec.batch_independent, per_sample, direct)
                if per_sample is not None and not spec.batch_independent:
                    m.training = False
                    self._handles.append(
                        m.register_forward_hook(partial(_apply_per_sample, per_sample), prepend=True)
                    )
                self.stochastic.append(st)
        except BaseException:
            self._restore()
            raise
        return self

    @property
    def has_coupled(self) -> bool:
        return any(st.coupled for st in self.stochastic)

    def _restore(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for m, flag in self._flags:
            if m.training != flag:
                m.training = flag

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._restore()


def _apply_per_sample(
    per_sample: PerSampleForward, module: nn.Module, args: tuple[Any, ...], output: Any
) -> torch.Tensor:
    return per_sample(module, output)


_REDUCED = (torch.float16, torch.bfloat16)


def _spatial_mean(out: torch.Tensor) -> torch.Tensor:
    """(N, C, *spatial) -> (N, C): mean over H, then over W, as the original does.

    Reduced-precision activations (autocast fp16/bf16) are averaged in float32: the MC samples
    differ from each other by far less than one bf16 step of their value, so rounding them to
    the activation's precision would distort the entropy computed from their differences.
    """
    if out.dtype in _REDUCED:
        out = out.float()
    while out.dim() > 2:
        out = out.mean(dim=2)
    return out


def _chunks(n_images: int, m: int, cap: int | None) -> Iterator[tuple[slice, int, int]]:
    """(image slice, first draw, number of draws) blocks with at most ``cap`` image-draws each."""
    if cap is None or n_images * m <= cap:
        yield slice(0, n_images), 0, m
    elif m <= cap:
        per = cap // m
        for s in range(0, n_images, per):
            yield slice(s, min(s + per, n_images)), 0, m
    else:
        for b in range(n_images):
            for m0 in range(0, m, cap):
                yield slice(b, b + 1), m0, min(cap, m - m0)


@dataclass
class _PassState:
    n_in: int
    expand_by: int | None
    allow_expand: bool = True
    expanded_at: str | None = None
    seeds: tuple[int, ...] | None = None


# --------------------------------------------------------------------------------------------
# Public sampler
# --------------------------------------------------------------------------------------------
class LatentMCSampler:
    """Monte-Carlo-dropout samples of the spatially averaged output of one layer.

    Parameters
    ----------
    model : nn.Module
        The segmentation network (e.g. :class:`offline_calibration.deeplab.DeepLabV3PlusDropBlock`
        or a LightningModule holding it). Its train/eval flags are restored after each call.
    layer : str
        Dotted path of the hooked module, e.g. ``"drop_block1"`` or
        ``"deeplab_v3plus_model.drop_block1"``.
    mc_samples : int
        M >= 2 stochastic passes per image.
    strategy : {"fast", "naive"}, default "fast"
        See the module docstring. ``"fast"`` falls back to a batched naive pass, with a warning,
        whenever it could not be exact for this model.
    chunk_size : int or None, default None
        Most image-draws (images x samples) processed at once: bounds the memory of the batched
        paths. None: all B*M at once. On the generic fast path each chunk re-runs the
        deterministic prefix, so choose it as large as memory allows.

    Attributes
    ----------
    strategy_used_ : {"fast", "naive"} or None
        What the last :meth:`sample` call ran (None before the first call).
    fallback_reason_ : str or None
        Why the last ``"fast"`` call fell back to naive sampling; None if it did not.

    Notes
    -----
    The model is changed while :meth:`sample` runs (hooks, train flags): do not run it from
    another thread meanwhile. ``sample(x, seeds=...)`` gives every image its own random stream:
    image ``b`` then gets the draws that ``sample(x[b:b+1])`` makes after
    ``torch.manual_seed(seeds[b])``, whatever else is in the batch (equal to rounding: a batched
    convolution may round differently), so that frames batched from several cameras are judged as
    if each were alone. The fast DropBlock path draws per image from its own generator in one
    batched pass; any other path runs image by image. Stochastic modules are found as modules; a ``F.dropout`` call
    inside some module's forward is invisible to both strategies' checks (the naive strategy
    still samples it, batch-wise). Decisions to fall back are cached per input shape.
    """

    def __init__(
        self,
        model: nn.Module,
        layer: str,
        mc_samples: int,
        *,
        strategy: Strategy = "fast",
        chunk_size: int | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise InputValidationError(f"model must be an nn.Module, got {type(model).__name__}.")
        if isinstance(mc_samples, bool) or not isinstance(mc_samples, int) or mc_samples < 2:
            raise InputValidationError(
                f"mc_samples must be an int >= 2 (entropy needs several samples), got {mc_samples!r}."
            )
        if strategy not in _STRATEGIES:
            raise InputValidationError(f"strategy must be one of {_STRATEGIES}, got {strategy!r}.")
        if chunk_size is not None and (
            isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
        ):
            raise InputValidationError(f"chunk_size must be a positive int or None, got {chunk_size!r}.")
        self.model = model
        self.layer = layer
        self.mc_samples = mc_samples
        self.strategy = strategy
        self.chunk_size = chunk_size
        self._module = get_module(model, layer)
        self.strategy_used_: str | None = None
        self.fallback_reason_: str | None = None
        # Per input signature: "expand" (needs chunked expanded passes) or a fallback reason.
        self._plans: dict[tuple[Any, ...], str] = {}

    # ----------------------------------------------------------------------------------------
    def sample(self, x: torch.Tensor, seeds: Sequence[int] | None = None) -> torch.Tensor:
        """Latent MC samples of a batch of images.

        Parameters
        ----------
        x : Tensor, shape (B, 3, H, W)
            Normalised images, on the model's device.
        seeds : sequence of B ints, optional
            One seed per image (see the class notes); None draws from torch's global generators.

        Returns
        -------
        Tensor, shape (B, M, C)
            Row ``b`` holds image ``b``'s M samples of the hooked output averaged over its
            spatial dimensions; on the activation's device, in its dtype (float32 when the
            activation is fp16/bf16, e.g. under autocast: the averages are taken in float32).

        Raises
        ------
        InputValidationError
            ``x`` is not a floating-point tensor of rank 4 with B >= 1, or ``seeds`` is not B ints.
        ModelLoadError
            The hooked layer did not run, or its output is not a tensor with a channel axis.
        """
        if not isinstance(x, torch.Tensor):
            raise InputValidationError(f"x must be a torch.Tensor, got {type(x).__name__}.")
        if x.dim() != 4 or x.shape[0] < 1:
            raise InputValidationError(
                f"x must have shape (B, 3, H, W) with B >= 1, got {tuple(x.shape)}; "
                "add a batch axis with x[None] for one image."
            )
        if not x.is_floating_point():
            raise InputValidationError(
                f"x must be a floating-point tensor (normalised images), got dtype {x.dtype}."
            )
        if seeds is not None:
            seeds = tuple(int(v) for v in seeds)
            if len(seeds) != x.shape[0]:
                raise InputValidationError(f"seeds must hold one int per image: {len(seeds)} for {x.shape[0]}.")
            if self.strategy == "naive" or self._plans.get(self._key(x)) == "per_image":
                return self._sample_per_image(x, seeds)
        with _MCSession(self.model) as session, torch.inference_mode():
            if not session.stochastic:
                warnings.warn(
                    f"{type(self.model).__name__} has no active dropout-like module: all "
                    f"{self.mc_samples} samples of layer {self.layer!r} are identical.",
                    RuntimeWarning,
                    stacklevel=2,
                )
            try:
                if self.strategy == "naive":
                    out, used, reason = self._sample_naive(x, session), "naive", None
                else:
                    out, used, reason = self._sample_fast(x, session, seeds)
            except _PerImage:
                out = None
        if out is None:  # seeds, and a path that draws for the whole batch: image by image
            self._plans[self._key(x)] = "per_image"
            return self._sample_per_image(x, seeds)
        self.strategy_used_, self.fallback_reason_ = used, reason
        return out

    def _key(self, x: torch.Tensor) -> tuple[Any, ...]:
        return (tuple(x.shape), x.dtype, x.device, self.chunk_size)

    def _sample_per_image(self, x: torch.Tensor, seeds: tuple[int, ...]) -> torch.Tensor:
        """Each image alone, torch's generators seeded with its seed (restored afterwards)."""
        devices = [x.device] if x.device.type == "cuda" else []
        parts = []
        for b, seed in enumerate(seeds):
            with torch.random.fork_rng(devices=devices, device_type=x.device.type):
                torch.manual_seed(seed)
                parts.append(self.sample(x[b : b + 1]))
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    # ----------------------------------------------------------------------------------------
    def _pass(
        self,
        x: torch.Tensor,
        session: _MCSession,
        *,
        expand_by: int | None,
        allow_expand: bool = True,
        seeds: tuple[int, ...] | None = None,
    ) -> torch.Tensor:
        """One forward pass stopped at the hooked layer.

        ``expand_by=None``: plain pass, returns (b, C). Otherwise fast pass: the input of the
        first stochastic module is repeated ``expand_by`` times per image (or the direct DropBlock
        sum is taken there); returns (b, expand_by, C).
        """
        state = _PassState(n_in=x.shape[0], expand_by=expand_by, allow_expand=allow_expand, seeds=seeds)
        handles = [self._module.register_forward_hook(partial(self._target_hook, state))]
        if expand_by is not None:
            for st in session.stochastic:
                handles.append(
                    st.module.register_forward_pre_hook(partial(self._stochastic_pre_hook, st, state))
                )
        try:
            self.model(x)
        except _Stop as stop:
            return stop.result
        except RuntimeError as err:
            if state.expanded_at is not None:
                raise _NotExact(
                    f"the forward pass failed once the batch was expanded at {state.expanded_at!r} "
                    f"({type(err).__name__}: {err}); probably an activation from before that module "
                    "merges with one after it before the hooked layer"
                ) from err
            raise
        finally:
            for h in handles:
                h.remove()
        raise ModelLoadError(
            f"Layer {self.layer!r} did not run during the forward pass of "
            f"{type(self.model).__name__}; hook a module that forward() calls."
        )

    def _target_hook(
        self, state: _PassState, module: nn.Module, args: tuple[Any, ...], output: Any
    ) -> None:
        if not isinstance(output, torch.Tensor) or output.dim() < 2:
            raise ModelLoadError(
                f"Layer {self.layer!r} must output a tensor of shape (B, C, ...), got "
                f"{type(output).__name__} {tuple(getattr(output, 'shape', ()))}."
            )
        latent = _spatial_mean(output)
        if state.expand_by is None:
            raise _Stop(latent)
        if state.expanded_at is None:
            raise _NotExact(
                f"layer {self.layer!r} is not downstream of any active stochastic module: "
                "every sample would be identical"
            )
        expected = state.n_in * state.expand_by
        if latent.shape[0] != expected:
            raise _NotExact(
                f"layer {self.layer!r} returned {latent.shape[0]} rows instead of {expected} after "
                f"the batch was expanded at {state.expanded_at!r}; probably an activation from "
                "before that module merges with one after it"
            )
        raise _Stop(latent.reshape(state.n_in, state.expand_by, -1))

    def _stochastic_pre_hook(
        self, st: _Stochastic, state: _PassState, module: nn.Module, args: tuple[Any, ...]
    ) -> tuple[Any, ...] | None:
        if st.coupled:
            raise _NotExact(
                f"stochastic module {st.name!r} ({type(module).__name__}) is not batch independent "
                "and has no per-sample implementation; declare one with "
                "register_dropout_type(cls, batch_independent=..., per_sample_forward=...)"
            )
        if not args or not isinstance(args[0], torch.Tensor):
            raise _NotExact(f"stochastic module {st.name!r} was not called with a tensor argument")
        rows = args[0].shape[0]
        if state.expanded_at is None:
            if rows != state.n_in:
                raise _NotExact(
                    f"first stochastic module {st.name!r} received {rows} rows for {state.n_in} images"
                )
            if module is self._module and st.direct is not None and args[0].dim() == 4:
                raise _Stop(self._direct(st, args[0], state.expand_by, state.seeds))
            if state.seeds is not None:
                raise _PerImage()
            if not state.allow_expand:
                raise _Rechunk()
            state.expanded_at = st.name
            return (args[0].repeat_interleave(state.expand_by, dim=0), *args[1:])
        expected = state.n_in * state.expand_by
        if rows != expected:
            raise _NotExact(
                f"stochastic module {st.name!r} received {rows} rows instead of {expected} after "
                f"the batch was expanded at {state.expanded_at!r}"
            )
        return None

    def _direct(
        self, st: _Stochastic, x: torch.Tensor, m: int, seeds: tuple[int, ...] | None = None
    ) -> torch.Tensor:
        """M DropBlock draws on x (B, C, H, W) reduced to spatial means (B, M, C), no copies of x.

        With ``seeds``, image b's draws come from a generator seeded with ``seeds[b]``, in the
        chunks that a batch of that image alone would use: exactly its single-image draws.
        """
        b_all, c = x.shape[:2]
        hw = x.shape[2] * x.shape[3]
        reduced = x.dtype in _REDUCED
        # (B, HW, C): a view for channels_last activations, a strided view that bmm reads
        # without copying for contiguous ones.
        xt = x.flatten(2).transpose(1, 2)
        out = torch.empty(b_all, m, c, device=x.device, dtype=torch.float32)
        # Reduced-precision activations: the masked sums in float32 (autocast would run the bmm
        # in fp16/bf16 and round the samples; see _spatial_mean). Nothing changes for fp32.
        with torch.autocast(device_type=x.device.type, enabled=False):
            for sl, m0, cnt, gen in self._direct_blocks(b_all, m, x.device, seeds):
                xs = xt[sl].float() if reduced else xt[sl]
                nb = xs.shape[0]
                keep, factor = st.direct(st.module, x[sl], nb * cnt, gen)
                sums = torch.bmm(keep.reshape(nb, cnt, hw).to(xs.dtype), xs)  # (nb, cnt, C)
                out[sl, m0 : m0 + cnt] = sums.float() * factor.view(nb, cnt, 1)
        return out if reduced else out.to(x.dtype)

    def _direct_blocks(
        self, b_all: int, m: int, device: torch.device, seeds: tuple[int, ...] | None
    ) -> Iterator[tuple[slice, int, int, torch.Generator | None]]:
        """(image slice, first draw, draws, generator) of the direct path, in drawing order."""
        if seeds is None:
            for sl, m0, cnt in _chunks(b_all, m, self.chunk_size):
                yield sl, m0, cnt, None
            return
        for b, seed in enumerate(seeds):
            gen = torch.Generator(device=device)
            gen.manual_seed(seed)
            for _, m0, cnt in _chunks(1, m, self.chunk_size):
                yield slice(b, b + 1), m0, cnt, gen

    # ----------------------------------------------------------------------------------------
    def _sample_naive(self, x: torch.Tensor, session: _MCSession) -> torch.Tensor:
        """M passes over the batch; one image per pass if a module couples the batch."""
        b = x.shape[0]
        per_pass = 1 if session.has_coupled else b
        if self.chunk_size is not None:
            per_pass = min(per_pass, self.chunk_size)
        draws = []
        for _ in range(self.mc_samples):
            parts = [self._pass(x[s : s + per_pass], session, expand_by=None) for s in range(0, b, per_pass)]
            draws.append(torch.cat(parts) if len(parts) > 1 else parts[0])
        return torch.stack(draws, dim=1)

    def _sample_batched_naive(self, x: torch.Tensor, session: _MCSession) -> torch.Tensor:
        """Each image repeated M times along the batch, whole network to the hook, per chunk."""
        if session.has_coupled:
            return self._sample_naive(x, session)
        b, m = x.shape[0], self.mc_samples
        out: torch.Tensor | None = None
        for sl, m0, cnt in _chunks(b, m, self.chunk_size):
            xs = x[sl].repeat_interleave(cnt, dim=0)
            lat = self._pass(xs, session, expand_by=None)
            lat = lat.reshape(xs.shape[0] // cnt, cnt, -1)
            if out is None:
                out = lat.new_empty(b, m, lat.shape[-1])
            out[sl, m0 : m0 + cnt] = lat
        return out

    def _sample_fast(
        self, x: torch.Tensor, session: _MCSession, seeds: tuple[int, ...] | None = None
    ) -> tuple[torch.Tensor, str, str | None]:
        key = self._key(x)
        plan = self._plans.get(key)
        if plan in (None, "expand", "per_image"):
            if seeds is not None and plan == "expand":
                raise _PerImage()
            try:
                return self._fast(x, session, key, None if plan == "per_image" else plan, seeds), "fast", None
            except _NotExact as err:
                plan = err.reason
                self._plans[key] = plan
        if seeds is not None:
            raise _PerImage()
        warnings.warn(
            f"LatentMCSampler: fast sampling of layer {self.layer!r} would not be exact ({plan}); "
            "falling back to batched naive sampling.",
            RuntimeWarning,
            stacklevel=3,
        )
        return self._sample_batched_naive(x, session), "naive", plan

    def _fast(
        self,
        x: torch.Tensor,
        session: _MCSession,
        key: tuple[Any, ...],
        plan: str | None,
        seeds: tuple[int, ...] | None = None,
    ) -> torch.Tensor:
        b, m, cap = x.shape[0], self.mc_samples, self.chunk_size
        fits = cap is None or b * m <= cap
        if fits or plan is None:
            try:
                # When B*M exceeds chunk_size, this pass only succeeds on the direct DropBlock path
                # (which chunks its own draws); an expansion raises _Rechunk instead.
                return self._pass(x, session, expand_by=m, allow_expand=fits, seeds=seeds)
            except _Rechunk:
                self._plans[key] = "expand"
                if seeds is not None:
                    raise _PerImage() from None
        out: torch.Tensor | None = None
        for sl, m0, cnt in _chunks(b, m, cap):
            lat = self._pass(x[sl], session, expand_by=cnt)
            if out is None:
                out = lat.new_empty(b, m, lat.shape[-1])
            out[sl, m0 : m0 + cnt] = lat
        return out
