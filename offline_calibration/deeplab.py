"""The reference segmentation network: DeepLabV3+ with a DropBlock2D on the deepest encoder feature.

The monitor hooks ``drop_block1`` (``deeplab_v3plus_model.drop_block1`` once wrapped by the
LightningModule in :mod:`offline_calibration.model`): its output, averaged over H and W, is the
latent vector whose Monte-Carlo spread gives the entropy features. The parts come from
segmentation-models-pytorch; only the DropBlock between encoder and decoder is ours, with plain
attribute names so that the hooked path stays ``drop_block1``.
"""

from __future__ import annotations

from collections.abc import Sequence

import segmentation_models_pytorch as smp
import torch
from dropblock import DropBlock2D
from torch import nn

from lsea_monitor.errors import InputValidationError

__all__ = ["DeepLabV3PlusDropBlock"]


class DeepLabV3PlusDropBlock(nn.Module):
    """DeepLabV3+ (smp parts) with ``drop_block1 = DropBlock2D`` on the deepest encoder feature.

    Parameters
    ----------
    encoder_name : str, default "resnet101"
        smp encoder name (the original: ResNet-101; tests use "resnet18").
    classes : int, default 20
        Output channels: the 19 Cityscapes train ids plus one class for the ignored label 255.
    encoder_weights : str or None, default None
        smp pre-trained weights; None (random initialisation) because nothing may be downloaded
        here. Trained weights come from a checkpoint.
    in_channels : int, default 3
    encoder_output_stride : {8, 16}, default 16
        Downsampling factor of the deepest feature (16: ResNet layer 4 dilated).
    decoder_channels : int, default 256
        ASPP width.
    decoder_atrous_rates : sequence of 3 int, default (6, 12, 18)
        ASPP dilation rates of the original at output stride 16.
    decoder_aspp_separable : bool, default True
        Depth-wise separable ASPP convolutions (smp's DeepLabV3+ default).
    decoder_aspp_dropout : float, default 0.1
        Dropout in the ASPP projection (after the hooked layer, so it never affects the monitor).
    block_size : int, default 12
        DropBlock block size in feature-map cells (the original: 12; later work: 8).
    drop_prob : float, default 0.2
        DropBlock drop probability (the original: 0.2; later work: 0.5).

    Notes
    -----
    On a feature map not much larger than the block (e.g. 4 x 8 cells for a 64 x 128 input at
    stride 16 with block 12), a single ``dropblock.DropBlock2D`` seed can blank all of it (a seed
    near the middle does: 0 of 32 cells kept); its rescaling then divides by zero and the output is
    NaN. Use inputs whose deepest feature map is well larger than ``block_size`` (256 x 512 gives
    16 x 32) or a smaller block.
    """

    def __init__(
        self,
        encoder_name: str = "resnet101",
        classes: int = 20,
        *,
        encoder_weights: str | None = None,
        in_channels: int = 3,
        encoder_output_stride: int = 16,
        decoder_channels: int = 256,
        decoder_atrous_rates: Sequence[int] = (6, 12, 18),
        decoder_aspp_separable: bool = True,
        decoder_aspp_dropout: float = 0.1,
        block_size: int = 12,
        drop_prob: float = 0.2,
    ) -> None:
        super().__init__()
        if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 1:
            raise InputValidationError(f"block_size must be a positive int, got {block_size!r}.")
        if not 0.0 <= float(drop_prob) < 1.0:
            raise InputValidationError(f"drop_prob must be in [0, 1), got {drop_prob!r}.")
        if encoder_output_stride not in (8, 16):
            raise InputValidationError(
                f"encoder_output_stride must be 8 or 16, got {encoder_output_stride!r}."
            )
        # Build smp's model once and keep its parts: the forward needs the DropBlock between
        # the encoder and the decoder, which smp's own forward has no place for.
        base = smp.DeepLabV3Plus(
            encoder_name=encoder_name,
            encoder_weights=encoder_weights,
            in_channels=in_channels,
            encoder_output_stride=encoder_output_stride,
            decoder_channels=decoder_channels,
            decoder_atrous_rates=tuple(decoder_atrous_rates),
            decoder_aspp_separable=decoder_aspp_separable,
            decoder_aspp_dropout=decoder_aspp_dropout,
            classes=classes,
        )
        self.encoder = base.encoder
        self.drop_block1 = DropBlock2D(drop_prob=float(drop_prob), block_size=block_size)
        self.decoder = base.decoder
        self.segmentation_head = base.segmentation_head
        self.classes = classes
        # The decoder concatenates the upsampled ASPP output with the stride-4 feature, and the
        # encoder halves the size five times: H and W must be multiples of 32 for the shapes to meet.
        self.input_multiple = 32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment a batch of normalised images.

        Parameters
        ----------
        x : Tensor, shape (B, in_channels, H, W)
            H and W multiples of 32.

        Returns
        -------
        Tensor, shape (B, classes, H, W)
            Logits.
        """
        if x.dim() != 4:
            raise InputValidationError(
                f"DeepLabV3PlusDropBlock expects (B, C, H, W) input, got shape {tuple(x.shape)}."
            )
        h, w = x.shape[-2:]
        if h % self.input_multiple or w % self.input_multiple:
            raise InputValidationError(
                f"Input height and width must be multiples of {self.input_multiple}, got {h} x {w}; "
                "resize the images (e.g. 256 x 512)."
            )
        features = self.encoder(x)
        features = [*features[:-1], self.drop_block1(features[-1])]
        return self.segmentation_head(self.decoder(features))
