"""Output-space OoD baselines from pytorch-ood, on the same model and images as the latent detectors.

Each gives one score per image (the mean of pytorch-ood's per-pixel outlier scores; higher = more
OoD, as everywhere in this project):

- ``msp``: negative maximum softmax probability (:class:`pytorch_ood.detector.MaxSoftmax`),
- ``energy``: negative log-sum-exp of the logits (:class:`pytorch_ood.detector.EnergyBased`),
- ``mcd_entropy``: MC-dropout predictive entropy, i.e. the entropy
  (:class:`pytorch_ood.detector.Entropy`) of the softmax averaged over M stochastic passes, with
  the same dropout-family modules active as the latent sampler (BatchNorm stays in eval).
"""

from __future__ import annotations

import torch
from torch import nn

from lsea_monitor.hooks import enable_mc_dropout

BASELINE_NAMES = ("msp", "energy", "mcd_entropy")


class OutputBaselines:
    """Callable computing the pytorch-ood baselines for a batch.

    Parameters
    ----------
    mc_samples : int
        Stochastic passes for ``mcd_entropy`` (each a full forward of the network).
    """

    def __init__(self, mc_samples: int) -> None:
        self.mc_samples = int(mc_samples)

    @torch.inference_mode()
    def __call__(self, model: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``images`` (B, 3, H, W) -> dict of (B,) scores."""
        from pytorch_ood.detector import EnergyBased, Entropy, MaxSoftmax

        was_training = {m: m.training for m in model.modules()}
        try:
            model.eval()
            logits = model(images).float()
            scores = {"msp": MaxSoftmax.score(logits), "energy": EnergyBased.score(logits)}
            enable_mc_dropout(model)
            mean_probs = torch.stack([model(images).float().softmax(dim=1) for _ in range(self.mc_samples)]).mean(0)
            # Entropy.score applies a softmax: the log of the mean probabilities gives them back exactly.
            scores["mcd_entropy"] = Entropy.score(mean_probs.clamp_min(1e-12).log())
        finally:
            for m, flag in was_training.items():
                m.train(flag)
        return {name: s.flatten(1).mean(dim=1) for name, s in scores.items()}
