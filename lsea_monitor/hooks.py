"""Find a layer by name, keep its output, and switch a model to Monte-Carlo dropout.

Torch only: optional libraries whose modules count as dropout (``dropblock``, ``timm``) are looked
up in ``sys.modules`` and never imported here. A model holding one of their modules has imported
them already; a model that has not cannot hold any.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import torch
from torch import nn

from lsea_monitor.errors import InputValidationError, ModelLoadError

__all__ = [
    "DropoutSpec",
    "Hook",
    "dropout_spec",
    "enable_mc_dropout",
    "get_module",
    "is_dropout_module",
    "register_dropout_type",
]

PerSampleForward = Callable[[nn.Module, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class DropoutSpec:
    """How a stochastic module type behaves on a batch.

    Attributes
    ----------
    batch_independent : bool
        True when every sample of the batch is perturbed independently with a rule that does
        not look at the other samples (``nn.Dropout``, ``Dropout2d``, DropPath, ...): a batch of
        B*M rows then gives exactly M independent single-image passes.
    per_sample_forward : callable or None
        ``f(module, x) -> y`` applying the module's stochastic rule to each sample on its own
        (e.g. DropBlock rescaled by each sample's keep fraction rather than the whole batch's).
        Used by the sampler with the module in eval mode, where its own forward is the identity.
    """

    batch_independent: bool = False
    per_sample_forward: PerSampleForward | None = None


# torch's own dropouts draw every element (or channel) of every sample independently and scale
# by a constant, so batching samples changes nothing.
_TORCH_DROPOUTS: tuple[type[nn.Module], ...] = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)

_REGISTRY: dict[type[nn.Module], DropoutSpec] = {}


def _optional_specs() -> dict[type[nn.Module], DropoutSpec]:
    """Dropout types of optional libraries that the running process has already imported."""
    specs: dict[type[nn.Module], DropoutSpec] = {}
    db = sys.modules.get("dropblock.dropblock") or sys.modules.get("dropblock")
    if db is not None:
        for name in ("DropBlock2D", "DropBlock3D"):
            cls = getattr(db, name, None)
            if isinstance(cls, type):
                # Rescales by the keep fraction of the whole batch: not batch independent.
                specs[cls] = DropoutSpec(batch_independent=False)
    timm_drop = sys.modules.get("timm.layers.drop")
    if timm_drop is not None:
        cls = getattr(timm_drop, "DropBlock2d", None)
        if isinstance(cls, type):
            specs[cls] = DropoutSpec(batch_independent=False)
        cls = getattr(timm_drop, "DropPath", None)
        if isinstance(cls, type):
            # One Bernoulli draw per sample, constant 1 / keep_prob scale.
            specs[cls] = DropoutSpec(batch_independent=True)
    return specs


def register_dropout_type(
    cls: type[nn.Module],
    *,
    batch_independent: bool = False,
    per_sample_forward: PerSampleForward | None = None,
) -> None:
    """Declare a module type as dropout-like (switched on by :func:`enable_mc_dropout`).

    Parameters
    ----------
    cls : type
        An ``nn.Module`` subclass; its subclasses match too.
    batch_independent : bool, default False
        True if each sample of a batch is perturbed independently of the others (see
        :class:`DropoutSpec`); lets the fast sampler batch the MC draws.
    per_sample_forward : callable, optional
        ``f(module, x) -> y`` with per-sample semantics, for types that are not batch
        independent. Without either, the sampler runs such modules one image per pass.

    Raises
    ------
    InputValidationError
        ``cls`` is not an ``nn.Module`` subclass, or ``per_sample_forward`` is not callable.
    """
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise InputValidationError(
            f"register_dropout_type expects an nn.Module subclass, got {cls!r}."
        )
    if per_sample_forward is not None and not callable(per_sample_forward):
        raise InputValidationError(
            f"per_sample_forward must be callable or None, got {per_sample_forward!r}."
        )
    _REGISTRY[cls] = DropoutSpec(bool(batch_independent), per_sample_forward)


def _spec_table() -> dict[type[nn.Module], DropoutSpec]:
    table = {c: DropoutSpec(batch_independent=True) for c in _TORCH_DROPOUTS}
    table.update(_optional_specs())
    table.update(_REGISTRY)
    return table


def _lookup(table: dict[type[nn.Module], DropoutSpec], module: nn.Module) -> DropoutSpec | None:
    for cls in type(module).__mro__:
        spec = table.get(cls)
        if spec is not None:
            return spec
    return None


def dropout_spec(module: nn.Module) -> DropoutSpec | None:
    """The :class:`DropoutSpec` of a module, or None if it is not dropout-like.

    Registered types take precedence over built-in ones; the most derived matching class wins.
    """
    return _lookup(_spec_table(), module)


def is_dropout_module(module: nn.Module) -> bool:
    """True for torch dropouts, dropblock/timm DropBlock, timm DropPath and registered types."""
    return dropout_spec(module) is not None


def enable_mc_dropout(model: nn.Module) -> list[nn.Module]:
    """Put ``model`` in eval mode, then every dropout-like module back in train mode.

    BatchNorm and every other module stay in eval mode, so only the dropout draws are random.

    Parameters
    ----------
    model : nn.Module

    Returns
    -------
    list of nn.Module
        The dropout-like modules now in train mode, in ``model.modules()`` order.
    """
    model.eval()
    table = _spec_table()
    switched = [m for m in model.modules() if _lookup(table, m) is not None]
    for m in switched:
        # train(False/True) recurses; a dropout with children would switch them too, so set the
        # flag of this module only.
        m.training = True
    return switched


def get_module(model: nn.Module, dotted_path: str) -> nn.Module:
    """The submodule of ``model`` at ``dotted_path`` (e.g. ``"deeplab_v3plus_model.drop_block1"``).

    Parameters
    ----------
    model : nn.Module
    dotted_path : str
        Attribute names separated by dots; indices of ``nn.Sequential``/``ModuleList`` are
        names too (``"decoder.aspp.0"``).

    Returns
    -------
    nn.Module

    Raises
    ------
    ModelLoadError
        No such submodule; the message lists the closest names and the top-level ones.
    """
    if not isinstance(model, nn.Module):
        raise InputValidationError(f"model must be an nn.Module, got {type(model).__name__}.")
    if not isinstance(dotted_path, str) or not dotted_path:
        raise ModelLoadError(f"Layer path must be a non-empty string, got {dotted_path!r}.")
    try:
        return model.get_submodule(dotted_path)
    except AttributeError as err:
        names = [n for n, _ in model.named_modules() if n]
        close = difflib.get_close_matches(dotted_path, names, n=5, cutoff=0.5)
        # Also match on the last component: "drop_block1" finds "deeplab_v3plus_model.drop_block1".
        leaf = dotted_path.rsplit(".", 1)[-1]
        close += [n for n in names if n.rsplit(".", 1)[-1] == leaf and n not in close]
        top = [n for n, _ in model.named_children()]
        raise ModelLoadError(
            f"Layer {dotted_path!r} not found in {type(model).__name__} ({err}). "
            f"Closest names: {close[:8] or 'none'}; top-level modules: {top}. "
            "Pass the dotted path as printed by model.named_modules()."
        ) from err


class Hook:
    """Forward hook that keeps the last output of one module.

    Parameters
    ----------
    module : nn.Module

    Attributes
    ----------
    output : Any
        The module's output of the last forward pass (None before the first one).

    Examples
    --------
    >>> with Hook(get_module(model, "drop_block1")) as hook:   # doctest: +SKIP
    ...     model(x)
    ...     latent = hook.output
    """

    def __init__(self, module: nn.Module) -> None:
        if not isinstance(module, nn.Module):
            raise InputValidationError(f"Hook expects an nn.Module, got {type(module).__name__}.")
        self.module = module
        self.output: Any = None
        self._handle: torch.utils.hooks.RemovableHandle | None = module.register_forward_hook(
            self._keep
        )

    def _keep(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        self.output = output

    def close(self) -> None:
        """Remove the hook (idempotent); ``output`` keeps its last value."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def __enter__(self) -> Hook:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
