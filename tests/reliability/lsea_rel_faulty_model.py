"""A test-only model class for fault injection from outside the node (no mocks in the node).

``FaultyDeepLab`` is the reference ``DeepLabV3PlusModule`` (same checkpoint, same weights) whose
forward pass misbehaves on two magic frames, recognisable after any resize and normalisation:

- a uniform magenta frame (255, 0, 255): ``forward`` raises ``RuntimeError`` (a model crash);
- a uniform cyan frame (0, 255, 255): the input becomes NaN, so the latent samples are non-finite.

Every other frame goes through the real model. The node loads it with
``model_class:=lsea_rel_faulty_model:FaultyDeepLab`` (this folder on PYTHONPATH) and an artefact
whose binding names this class.
"""

from __future__ import annotations

import torch

from offline_calibration.model import DeepLabV3PlusModule

MODEL_CLASS = "lsea_rel_faulty_model:FaultyDeepLab"
MAGIC_RAISE_RGB = (255, 0, 255)
MAGIC_NAN_RGB = (0, 255, 255)


def _uniform_pattern(x: torch.Tensor) -> list[str]:
    """Per image of a normalised batch (B, 3, H, W): 'raise', 'nan' or '' by the magic colours."""
    flat = x.detach().float().flatten(2)  # (B, 3, HW)
    uniform = (flat.amax(dim=2) - flat.amin(dim=2)).abs().amax(dim=1) < 1e-3  # (B,)
    mean = flat.mean(dim=2)  # (B, 3); normalised 255 is > +1.5 and 0 is < -1.5 for any usual mean/std
    out = []
    for b in range(x.shape[0]):
        r, g, bl = (float(v) for v in mean[b])
        if not bool(uniform[b]):
            out.append("")
        elif r > 1.5 and g < -1.5 and bl > 1.5:
            out.append("raise")
        elif r < -1.5 and g > 1.5 and bl > 1.5:
            out.append("nan")
        else:
            out.append("")
    return out


class FaultyDeepLab(DeepLabV3PlusModule):
    """DeepLabV3+ that raises or yields NaN on the magic frames (see the module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kinds = _uniform_pattern(x)
        if "raise" in kinds:
            raise RuntimeError("injected model fault: magic magenta frame")
        if "nan" in kinds:
            x = x.clone()
            for b, k in enumerate(kinds):
                if k == "nan":
                    x[b] = float("nan")
        return super().forward(x)
