"""Benchmark section ``calibration``: latent-entropy extraction throughput of ``lsea-calibrate``.

Images per second through the real calibration path (``extract_set``: Lightning ``Trainer.predict``,
per-image seeded draws, checksummed cache writes) with the fast and the naive sampler, side by
side, on the reference DeepLabV3+ (ResNet-18, ``drop_block1``, untrained: timings do not depend on
training) at 256 x 512, M = 10, batch 4, over synthetic Cityscapes-layout images.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def bench_calibration(ctx: Any) -> dict[str, Any]:
    """Calibration extraction throughput (images/s), fast vs naive sampler, through Trainer.predict."""
    import torch

    from lsea_monitor.preprocessing import Preprocessing
    from offline_calibration.cityscapes import CityscapesDataset
    from offline_calibration.extraction import FeatureCache, LatentExtractionModule, extract_set
    from offline_calibration.model import HOOKED_LAYER, DeepLabV3PlusModule
    from offline_calibration.synthetic import generate_dataset

    height, width, n_images = (64, 128, 4) if ctx.quick else (256, 512, 12)
    mc_samples = 10
    torch.manual_seed(0)
    model = DeepLabV3PlusModule(encoder_name="resnet18", block_size=3 if ctx.quick else 12).eval()
    with tempfile.TemporaryDirectory(prefix="lsea-bench-calib-") as tmp:
        root = Path(tmp)
        generate_dataset(root / "data", n_train=1, n_val=n_images, n_test=1, height=height, width=width,
                         progress=False)
        dataset = CityscapesDataset(root / "data", "val", Preprocessing(height, width), return_labels=False)
        seconds: dict[str, list[float]] = {"fast": [], "naive": []}
        for rnd in range(1 if ctx.quick else 2):
            for strategy in (("fast", "naive") if rnd % 2 == 0 else ("naive", "fast")):
                module = LatentExtractionModule(model, layer=HOOKED_LAYER, mc_samples=mc_samples, strategy=strategy)
                cache = FeatureCache(root / f"cache-{strategy}-{rnd}", {"set": "val/ind"})
                t0 = time.perf_counter()
                extract_set(dataset, cache, module, batch_size=4, accelerator="cpu", devices=1, progress=False)
                seconds[strategy].append(time.perf_counter() - t0)
    best = {k: min(v) for k, v in seconds.items()}
    table = [{"sampler": k, "images": n_images, "best_s": round(v, 2), "images_per_s": round(n_images / v, 2)}
             for k, v in best.items()]
    return {
        "encoder": "resnet18", "input_hw": [height, width], "mc_samples": mc_samples, "images": n_images,
        "fast_images_per_s": n_images / best["fast"], "naive_images_per_s": n_images / best["naive"],
        "fast_over_naive_throughput": best["naive"] / best["fast"], "table": table,
    }


SECTIONS = {"calibration": bench_calibration}
