"""Accelerator helpers of the per-frame path: ``torch.compile`` of the deterministic parts of a model,
``channels_last`` and reusable pinned host buffers for frames on their way to a GPU.

Torch only (ROS-free core). :class:`~lsea_monitor.pipeline.FrameScorer` uses them behind options
that are off by default (``compile_mode``, ``channels_last``); pinned staging is used whenever the
device is a CUDA GPU.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import numpy as np
import torch
from torch import nn

from lsea_monitor.errors import InputValidationError
from lsea_monitor.hooks import get_module, is_dropout_module

__all__ = ["COMPILE_MODES", "PinnedStaging", "compile_deterministic_parts", "to_channels_last"]

#: ``torch.compile`` modes accepted by the monitor ("reduce-overhead" adds CUDA graphs on a GPU).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_deterministic_parts(
    model: nn.Module, layer: str, *, mode: str = "default", dynamic: bool | None = None
) -> list[str]:
    """``torch.compile`` (in place) every largest submodule free of stochastic modules and of ``layer``.

    The MC sampler cuts the forward pass at the hooked layer with hooks on that layer and on the
    stochastic modules, and those must stay plain Python; everything else that runs, typically
    the encoder before ``drop_block1``, is the deterministic bulk of the per-frame cost and is
    compiled. ``nn.Module.compile`` keeps module names, parameters and state dicts unchanged.
    Compilation happens lazily at the first call (the warm-up), once per input shape unless
    dynamic shapes kick in (torch's automatic dynamic after a second batch size).

    Parameters
    ----------
    model : nn.Module
    layer : str
        Dotted path of the hooked module (see :func:`~lsea_monitor.hooks.get_module`).
    mode : str, default "default"
        One of :data:`COMPILE_MODES`.
    dynamic : bool or None
        Passed to ``torch.compile``.

    Returns
    -------
    list of str
        Dotted names of the compiled submodules (empty when nothing qualifies).
    """
    if mode not in COMPILE_MODES:
        raise InputValidationError(f"compile mode must be one of {COMPILE_MODES}, got {mode!r}.")
    target = get_module(model, layer)
    keep_plain = {id(m) for m in model.modules() if m is target or is_dropout_module(m)}
    compiled: list[str] = []

    def visit(prefix: str, module: nn.Module) -> None:
        for name, child in module.named_children():
            full = f"{prefix}.{name}" if prefix else name
            if any(id(m) in keep_plain for m in child.modules()):
                visit(full, child)
            elif next(child.parameters(), None) is not None:
                child.compile(mode=mode, dynamic=dynamic)
                compiled.append(full)

    visit("", model)
    return compiled


def to_channels_last(model: nn.Module) -> nn.Module:
    """Convert the model's 4-D parameters and buffers to ``channels_last`` (in place); returns it."""
    return model.to(memory_format=torch.channels_last)


class PinnedStaging:
    """Reusable page-locked host buffers: frames are stacked straight into one and copied asynchronously.

    ``upload`` writes the frames into a pinned buffer of the batch's shape (kept for the next
    frame of that shape) and starts a ``non_blocking`` copy to the device. A buffer is only
    rewritten once the copy out of it has finished: an event recorded after the copy is queried
    (no wait in steady state, since the previous frame's verdict synchronised long after it).

    Parameters
    ----------
    max_buffers : int, default 8
        Shapes kept (batch sizes of a multi-camera node); the least recently used goes first.
    """

    def __init__(self, max_buffers: int = 8) -> None:
        self.max_buffers = max_buffers
        self._buffers: OrderedDict[tuple[int, ...], tuple[torch.Tensor, torch.cuda.Event | None]] = OrderedDict()

    def upload(self, frames: Sequence[np.ndarray], device: torch.device) -> torch.Tensor:
        """Stack equally shaped ``uint8`` frames (H, W, 3) into (B, H, W, 3) on ``device`` (async)."""
        shape = (len(frames), *frames[0].shape)
        buf, event = self._buffers.pop(shape, (None, None))
        if buf is None:
            buf = torch.empty(shape, dtype=torch.uint8, pin_memory=True)
        elif event is not None and not event.query():
            event.synchronize()  # only if the previous copy out of this buffer is still running
        np.stack(frames, out=buf.numpy())
        out = buf.to(device, non_blocking=True)
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(device))
        self._buffers[shape] = (buf, event)
        while len(self._buffers) > self.max_buffers:
            self._buffers.popitem(last=False)
        return out
