"""``lsea-calibrate`` as a process: SIGKILL during extraction, rerun -> it resumes from the cache (the
entries written before the kill are reused untouched, only the rest is extracted) and its report's
detector metrics equal an uninterrupted run's; a corrupted cache entry, and a planted one holding a
pickle payload, are detected (checksum, allow_pickle=False), never executed, and recomputed.

A small configuration (one anomaly kind, 6 images per split, batches of 2, no baselines) derived
from the session monitor's calibration.yaml keeps the three runs within about two minutes.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import yaml
from lsea_rel_util import ChildProcess, record

pytestmark = [pytest.mark.slow]

RUN_TIMEOUT_S = 600.0


class _Payload:
    """Unpickling this creates a directory: proof that code from a file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.mkdir, (self.marker,))


def _config(files: Any, root: Path, name: str) -> Path:
    data = yaml.safe_load((files.report.parent.parent / "calibration.yaml").read_text())
    data["output_dir"] = str(root / name / "out")
    data["cache_dir"] = str(root / name / "cache")
    data["dataset"].update(root=str(files.data_root), max_images=6, anomaly_kinds=["fog"])
    data["model"]["checkpoint"] = str(files.checkpoint)
    data["sampling"]["batch_size"] = 2
    data["baselines"] = {"enabled": False}
    data["detection"] = {**data.get("detection", {}), "pca_components": 2, "threshold_folds": 3, "cross_type": False}
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _command(config: Path) -> list[str]:
    script = Path(sys.executable).parent / "lsea-calibrate"
    exe = [str(script)] if script.exists() else [sys.executable, "-m", "offline_calibration.calibrate"]
    return exe + ["--config", str(config), "--no-progress"]


def _entries(cache: Path) -> dict[str, tuple[int, int]]:
    """Cache entries by path: (inode, mtime_ns); a rewritten entry gets a new mtime (and a new file)."""
    return {str(p): (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(cache.glob("latent/*/batch-*.npz"))}


def _images_in(paths: list[str]) -> int:
    from offline_calibration.extraction import read_entry

    total = 0
    for p in paths:
        entry = read_entry(Path(p))
        assert entry is not None, f"unreadable cache entry {p}"
        total += len(entry["index"])
    return total


def _run(start_process: Callable[..., ChildProcess], config: Path, name: str) -> tuple[dict[str, Any], float]:
    t0 = time.monotonic()
    proc = start_process(_command(config), name=name)
    rc = proc.wait(RUN_TIMEOUT_S)
    assert rc == 0, f"lsea-calibrate ({name}) exited with {rc}:\n{proc.log()[-4000:]}"
    report = json.loads((Path(yaml.safe_load(config.read_text())["output_dir"]) / "report.json").read_text())
    return report, time.monotonic() - t0


def _same_results(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert b["detectors"] == a["detectors"], "detector metrics differ from the uninterrupted run"
    assert b["data"] == a["data"]
    assert b["deployed"]["threshold"] == a["deployed"]["threshold"]
    from lsea_monitor.artefact import DetectorArtefact

    x = np.random.default_rng(0).normal(size=(64, DetectorArtefact.load(a["deployed"]["artefact"]).n_features))
    np.testing.assert_array_equal(DetectorArtefact.load(b["deployed"]["artefact"]).score_features(x),
                                  DetectorArtefact.load(a["deployed"]["artefact"]).score_features(x))


def test_killed_calibration_resumes_from_its_cache_and_equals_an_uninterrupted_run(
    start_process: Callable[..., ChildProcess], monitor_files: Any, tmp_path: Path,
) -> None:
    from offline_calibration.extraction import read_entry

    # 1. the uninterrupted reference
    ref_cfg = _config(monitor_files, tmp_path, "reference")
    reference, t_reference = _run(start_process, ref_cfg, "reference")
    n_images = sum(reference["data"][k] for k in ("val/ind", "val/fog", "test/ind", "test/fog"))
    n_entries = len(_entries(tmp_path / "reference" / "cache"))

    # 2. the same run, SIGKILLed once a few cache entries exist
    cfg = _config(monitor_files, tmp_path, "killed")
    cache = tmp_path / "killed" / "cache"
    proc = start_process(_command(cfg), name="killed")
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while len(_entries(cache)) < 3:
        assert proc.alive(), f"lsea-calibrate ended before it could be killed:\n{proc.log()[-3000:]}"
        assert time.monotonic() < deadline, "no cache entries appeared"
        time.sleep(0.05)
    proc.send(signal.SIGKILL)
    assert proc.wait(30.0) == -signal.SIGKILL
    assert not (tmp_path / "killed" / "out" / "report.json").exists()
    before = _entries(cache)
    assert len(before) < n_entries, "the kill came after the extraction had finished"
    cached_images = _images_in(list(before))
    leftovers = sorted(str(p) for p in cache.glob("latent/*/.tmp-*"))

    # 3. rerun: resumes from the cache
    resumed, t_resumed = _run(start_process, cfg, "resumed")
    after = _entries(cache)
    for path, stamp in before.items():
        assert after.get(path) == stamp, f"{path} was rewritten instead of reused"
    new = [p for p in after if p not in before]
    extracted_on_resume = _images_in(new)
    assert 0 < cached_images and extracted_on_resume == n_images - cached_images, (
        extracted_on_resume, n_images, cached_images)
    _same_results(reference, resumed)

    # 4. a corrupted entry (same size, flipped bytes) and a planted entry holding a pickle payload
    victim = Path(sorted(after)[0])
    data = bytearray(victim.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 16] = bytes(b ^ 0x5A for b in data[mid:mid + 16])
    victim.write_bytes(bytes(data))
    assert read_entry(victim) is None, "the corruption went undetected by the entry checksum"
    marker = tmp_path / "pwned"
    planted = victim.parent / "batch-9999990-9999999-r0.npz"
    np.savez(planted, index=np.array([_Payload(marker)], dtype=object))
    untouched = {p: s for p, s in _entries(cache).items() if p not in (str(victim), str(planted))}
    repaired, t_repaired = _run(start_process, cfg, "repaired")
    final = _entries(cache)
    assert read_entry(victim) is not None and final[str(victim)] != after[str(victim)], \
        "the corrupted entry was not recomputed"
    assert str(planted) not in final and not marker.exists(), "the planted pickle entry was kept or executed"
    for path, stamp in untouched.items():
        assert final.get(path) == stamp, f"{path} was recomputed although it was intact"
    _same_results(reference, repaired)

    t_extract = {name: round(sum(r["timing_s"]["extraction"].values()), 2)
                 for name, r in (("reference", reference), ("resumed", resumed), ("repaired", repaired))}
    figures = {"images": n_images, "cache_entries": n_entries, "entries_before_kill": len(before),
               "images_cached_before_kill": cached_images, "images_extracted_on_resume": extracted_on_resume,
               "tmp_files_left_by_kill": len(leftovers), "extraction_s": t_extract,
               "run_s": {"reference": round(t_reference, 1), "resumed": round(t_resumed, 1),
                         "repaired": round(t_repaired, 1)},
               "resumed_equals_uninterrupted": True, "corrupted_entry_recomputed": True,
               "pickle_entry_refused": True}
    record("calibration", figures)
