"""Load the user's trained model: any LightningModule checkpoint, named by import path.

The core never imports Lightning itself: the class named by the user brings it in. Checkpoints are
read with ``weights_only=True`` (no arbitrary code from the file) unless the user explicitly says
the file is trusted.
"""

from __future__ import annotations

import importlib
import io
import os
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lsea_monitor.errors import ModelLoadError


def import_object(import_path: str) -> Any:
    """Import ``package.module:Name`` (or ``package.module.Name``) and return the object."""
    module_name, sep, attr = import_path.partition(":")
    if not sep:
        module_name, _, attr = import_path.rpartition(".")
    if not module_name or not attr:
        raise ModelLoadError(f"Model class {import_path!r} is not an import path; use 'package.module:Class'.")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ModelLoadError(f"Cannot import module {module_name!r} for model class {import_path!r}: {err}. "
                             "Is the package that defines your model installed in this environment?") from err
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ModelLoadError(f"Module {module_name!r} has no attribute {attr!r} (model class {import_path!r}).")
        obj = getattr(obj, part)
    return obj


def load_model(
    checkpoint: str | os.PathLike[str],
    model_class: str,
    *,
    map_location: str | torch.device = "cpu",
    trust_checkpoint: bool = False,
    verified_bytes: bytes | None = None,
) -> nn.Module:
    """Load a LightningModule (or any class with ``load_from_checkpoint``) from a checkpoint.

    Parameters
    ----------
    checkpoint : path
        The ``.ckpt`` file written by Lightning.
    model_class : str
        Import path of the class, e.g. ``offline_calibration.model:DeepLabV3PlusModule``.
    map_location : device
    trust_checkpoint : bool
        Allow full unpickling. Only for checkpoints from a trusted source: unpickling can execute
        arbitrary code. By default only tensors and plain containers are read.
    verified_bytes : bytes, optional
        The checkpoint's content, already read and checked (e.g. its SHA-256): loaded instead of
        reading ``checkpoint`` again, which names it in messages.

    Returns
    -------
    nn.Module in eval mode.
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise ModelLoadError(f"Checkpoint not found at {path}. Train one with lsea-train or set 'checkpoint'.")
    cls = import_object(model_class)
    loader = getattr(cls, "load_from_checkpoint", None)
    if loader is None:
        raise ModelLoadError(f"{model_class} has no load_from_checkpoint(); give a LightningModule class.")
    try:
        source = io.BytesIO(verified_bytes) if verified_bytes is not None else str(path)
        model = loader(source, map_location=map_location, weights_only=not trust_checkpoint)
    except pickle.UnpicklingError as err:
        raise ModelLoadError(
            f"Checkpoint {path} holds pickled objects beyond tensors and plain types, which are not loaded by "
            f"default because unpickling can run code ({err}). If the file comes from a trusted source, opt in "
            "with 'model: {trust_checkpoint: true}' in the lsea-calibrate config, the node's trust_checkpoint "
            "parameter, lsea-replay-eval --trust-checkpoint (trust_checkpoint=True in Python), or re-save the "
            "checkpoint with tensors and plain types only."
        ) from err
    except (RuntimeError, KeyError, TypeError, ValueError, EOFError, OSError) as err:
        raise ModelLoadError(f"Could not load checkpoint {path} as {model_class}: {type(err).__name__}: {err}. "
                             "Check that the checkpoint was trained with this class and is complete.") from err
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"{model_class}.load_from_checkpoint returned {type(model).__name__}, not an nn.Module.")
    return model.eval()
