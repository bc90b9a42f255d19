"""Artefact, checkpoint and configuration safety beyond tests/core/test_artefact.py:

- checkpoints are read with ``weights_only``: a checkpoint carrying a pickle payload (zip format,
  or a legacy raw pickle) is refused by ``load_model``, by ``lsea-calibrate`` and by the node's
  loader without the payload running (a positive control proves the payload is live), with a
  message saying how to opt in;
- calibration config paths: a directory or a device where a file is expected, a file or a device
  where a folder is expected, an artefact name escaping ``output_dir`` -> a clear error naming the
  key (exit code 2), before anything is loaded;
- node parameter paths: a directory, a device (/dev/zero: reading it would never end) or a FIFO as
  checkpoint or artefact -> a clear, prompt configure error; and one node process started that
  way exits with code 1 and a message, without a traceback or a hang.
"""

from __future__ import annotations

import argparse
import copy
import os
import pickle
import signal
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
import yaml
from lsea_rel_util import ChildProcess, STARTUP_TIMEOUT_S, record

from lsea_monitor.artefact import DetectorArtefact, sha256_file
from lsea_monitor.checkpoint import load_model
from lsea_monitor.errors import ArtefactError, InputValidationError, ModelLoadError
from lsea_monitor.pipeline import FrameScorer

FIGURES: dict[str, Any] = {}


@pytest.fixture(scope="module", autouse=True)
def _record_figures() -> Any:
    yield
    if FIGURES:
        record("safety", FIGURES)


class Payload:
    """Unpickling this creates a directory: proof that code from the file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.mkdir, (self.marker,))


def _evil_checkpoints(files: Any, tmp_path: Path) -> dict[str, tuple[Path, Path]]:
    """A real Lightning checkpoint with a payload inside (zip format) and a legacy raw pickle."""
    ckpt = torch.load(files.checkpoint, map_location="cpu", weights_only=True)
    zip_marker, raw_marker = tmp_path / "pwned-zip", tmp_path / "pwned-raw"
    ckpt["hyper_parameters"] = {**ckpt.get("hyper_parameters", {}), "note": Payload(zip_marker)}
    zip_path = tmp_path / "evil.ckpt"
    torch.save(ckpt, zip_path)
    raw_path = tmp_path / "evil-raw.ckpt"
    with open(raw_path, "wb") as f:
        pickle.dump({"state_dict": {}, "x": Payload(raw_marker)}, f)
    return {"zip": (zip_path, zip_marker), "raw": (raw_path, raw_marker)}


def test_crafted_pickle_checkpoints_are_refused_without_running(monitor_files: Any, tmp_path: Path) -> None:
    evil = _evil_checkpoints(monitor_files, tmp_path)
    # positive control: the zip payload is live (full unpickling runs it)
    control = tmp_path / "control"
    control.mkdir()
    ctl = _evil_checkpoints(monitor_files, control)
    torch.load(ctl["zip"][0], map_location="cpu", weights_only=False)
    assert ctl["zip"][1].is_dir(), "control: the payload did not run under full unpickling"

    for kind, (path, marker) in evil.items():
        with pytest.raises(ModelLoadError) as info:
            load_model(path, monitor_files.model_class)
        assert not marker.exists(), f"{kind}: the payload ran"
        message = str(info.value)
        assert "trust_checkpoint" in message and "unpickling can run code" in message, message
    # the good checkpoint loads with weights_only (the default)
    assert isinstance(load_model(monitor_files.checkpoint, monitor_files.model_class), torch.nn.Module)

    # the node's loader: an artefact bound to the evil checkpoint gets past the hash check, then is refused
    zip_path, zip_marker = evil["zip"]
    bound = _bound_artefact(monitor_files, zip_path, tmp_path / "bound.safetensors")
    with pytest.raises(ModelLoadError, match="trust_checkpoint"):
        FrameScorer.from_files(checkpoint=str(zip_path), model_class="", layer="", artefact=str(bound), device="cpu")
    assert not zip_marker.exists()

    # lsea-calibrate with the evil checkpoint in its config: exit code 2 and the message, nothing run
    from offline_calibration.calibrate import main

    cfg = _base_config(monitor_files, tmp_path)
    cfg["model"]["checkpoint"] = str(zip_path)
    path = tmp_path / "evil.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["--config", str(path), "--no-progress"]) == 2
    assert not zip_marker.exists()
    FIGURES["crafted_checkpoints_refused"] = 4  # zip + raw via load_model, node loader, lsea-calibrate


def _namespace_checkpoint(files: Any, path: Path) -> Path:
    """The real checkpoint plus an ``argparse.Namespace`` (what many training scripts pickle into theirs):
    harmless, but refused by ``weights_only``; Lightning ignores the extra top-level key."""
    ckpt = torch.load(files.checkpoint, map_location="cpu", weights_only=True)
    ckpt["training_args"] = argparse.Namespace(lr=0.01, note="pickled by the training script")
    torch.save(ckpt, path)
    return path


def _bound_artefact(files: Any, checkpoint: Path, out: Path) -> Path:
    """The real artefact, re-bound to ``checkpoint`` (as if calibrated with it: same weights)."""
    art = DetectorArtefact.load(files.artefact)
    return replace(art, binding=replace(art.binding, checkpoint_sha256=sha256_file(checkpoint))).save(out)


def test_trust_checkpoint_unpickles_only_the_file_the_artefact_was_calibrated_with(
    monitor_files: Any, tmp_path: Path,
) -> None:
    """``trust_checkpoint`` (node parameter, replay flag) loads a checkpoint that pickles objects, but
    only the bytes whose SHA-256 the artefact records: a swapped file is refused before it is read."""
    ns_ckpt = _namespace_checkpoint(monitor_files, tmp_path / "with-namespace.ckpt")
    ns_art = _bound_artefact(monitor_files, ns_ckpt, tmp_path / "ns.safetensors")
    common = {"model_class": "", "layer": "", "device": "cpu"}
    with pytest.raises(ModelLoadError, match="trust_checkpoint"):  # the default: weights only
        FrameScorer.from_files(checkpoint=str(ns_ckpt), artefact=str(ns_art), **common)
    trusted = FrameScorer.from_files(checkpoint=str(ns_ckpt), artefact=str(ns_art), trust_checkpoint=True, **common)
    plain = FrameScorer.from_files(checkpoint=str(monitor_files.checkpoint), artefact=str(monitor_files.artefact),
                                   **common)
    frame = np.random.default_rng(0).integers(0, 256, (96, 160, 3), dtype=np.uint8)
    (a,), (b,) = trusted.score_images([frame], seed=7), plain.score_images([frame], seed=7)
    assert a.valid and b.valid and a.score == pytest.approx(b.score, rel=1e-6, abs=1e-9)  # the same weights

    # a file other than the one calibrated: refused by its hash before anything in it runs
    evil = _evil_checkpoints(monitor_files, tmp_path)
    zip_path, zip_marker = evil["zip"]
    with pytest.raises(ArtefactError):
        FrameScorer.from_files(checkpoint=str(zip_path), artefact=str(monitor_files.artefact), trust_checkpoint=True,
                               **common)
    assert not zip_marker.exists(), "the payload ran before the hash check"
    # the bytes loaded are the bytes checked, not what the path holds by then (a swap after the check)
    model = load_model(zip_path, monitor_files.model_class, trust_checkpoint=True,
                       verified_bytes=ns_ckpt.read_bytes())
    assert not zip_marker.exists() and isinstance(model, torch.nn.Module)
    # positive control: bound to the payload file itself, trust does unpickle it (the user's opt-in)
    evil_art = _bound_artefact(monitor_files, zip_path, tmp_path / "evil.safetensors")
    FrameScorer.from_files(checkpoint=str(zip_path), artefact=str(evil_art), trust_checkpoint=True, **common)
    assert zip_marker.is_dir()


@pytest.mark.ros
@pytest.mark.slow
def test_node_process_loads_a_pickling_checkpoint_only_with_trust_checkpoint(
    start_process: Callable[..., ChildProcess], make_probe: Callable[[], Any], monitor_files: Any, tmp_path: Path,
) -> None:
    from lsea_rel_util import wait_active
    from lsea_ros_testutil import node_command

    ns_ckpt = _namespace_checkpoint(monitor_files, tmp_path / "with-namespace.ckpt")
    ns_art = _bound_artefact(monitor_files, ns_ckpt, tmp_path / "ns.safetensors")
    refused = start_process(node_command(monitor_files, checkpoint=str(ns_ckpt), artefact=str(ns_art)),
                            name="node-untrusted")
    rc = refused.wait(STARTUP_TIMEOUT_S)
    log = refused.log()
    assert rc == 1 and "configure failed" in log and "trust_checkpoint" in log, f"exit {rc}:\n{log[-3000:]}"
    probe = make_probe()
    t0 = time.time()
    node = start_process(node_command(monitor_files, namespace=probe.namespace, checkpoint=str(ns_ckpt),
                                      artefact=str(ns_art), trust_checkpoint=True), name="node-trusted")
    wait_active(probe, node, t0)
    assert node.stop(signal.SIGINT, timeout_s=30.0) == 0, node.log()[-3000:]


def _base_config(files: Any, root: Path) -> dict[str, Any]:
    data = yaml.safe_load((files.report.parent.parent / "calibration.yaml").read_text())
    data.update(output_dir=str(root / "out"))
    data["dataset"]["root"] = str(files.data_root)
    data["model"]["checkpoint"] = str(files.checkpoint)
    return data


def test_calibration_config_paths_are_validated_with_clear_errors(
    monitor_files: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    from offline_calibration.calibrate import main
    from offline_calibration.config import load_config

    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    cases = {
        "checkpoint is a directory": (("model", "checkpoint"), str(tmp_path), "model.checkpoint"),
        "checkpoint is a device": (("model", "checkpoint"), "/dev/zero", "model.checkpoint"),
        "checkpoint outside, missing": (("model", "checkpoint"), "../../../nowhere/best.ckpt", "model.checkpoint"),
        "dataset root is a file": (("dataset", "root"), str(a_file), "dataset.root"),
        "dataset root is a device": (("dataset", "root"), "/dev/null", "dataset.root"),
        "output_dir is a file": (("output_dir",), str(a_file), "output_dir"),
        "output_dir is a device": (("output_dir",), "/dev/null", "output_dir"),
        "output_dir under a file": (("output_dir",), str(a_file / "out"), "output_dir"),
        "cache_dir is a file": (("cache_dir",), str(a_file), "cache_dir"),
        "artefact escapes output_dir": (("artefact_name",), "../../escaped.safetensors", "artefact_name"),
        "artefact name is absolute": (("artefact_name",), str(tmp_path / "abs.safetensors"), "artefact_name"),
    }
    for name, (keys, value, key_name) in cases.items():
        data = copy.deepcopy(_base_config(monitor_files, tmp_path))
        node = data
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
        path = tmp_path / "cfg.yaml"
        path.write_text(yaml.safe_dump(data))
        with pytest.raises(InputValidationError) as info:
            load_config(path)
        assert key_name in str(info.value), (name, str(info.value))
        t0 = time.monotonic()
        capsys.readouterr()
        assert main(["--config", str(path), "--no-progress"]) == 2, name
        err = capsys.readouterr().err
        assert "lsea-calibrate: error:" in err and key_name in err and "Traceback" not in err, (name, err)
        assert time.monotonic() - t0 < 10.0, f"{name}: the error came only after loading things"
    assert not (tmp_path.parent / "escaped.safetensors").exists()
    FIGURES["config_path_cases_rejected"] = len(cases)


def test_node_parameter_paths_fail_configure_promptly_with_clear_errors(monitor_files: Any, tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    link = tmp_path / "link-to-zero"
    link.symlink_to("/dev/zero")
    good = {"checkpoint": str(monitor_files.checkpoint), "artefact": str(monitor_files.artefact)}
    cases = {
        "checkpoint is a directory": ({"checkpoint": str(tmp_path)}, ModelLoadError, "Set 'checkpoint'"),
        "checkpoint is /dev/zero": ({"checkpoint": "/dev/zero"}, ModelLoadError, "Set 'checkpoint'"),
        "checkpoint is a FIFO": ({"checkpoint": str(fifo)}, ModelLoadError, "Set 'checkpoint'"),
        "checkpoint links to /dev/zero": ({"checkpoint": str(link)}, ModelLoadError, "Set 'checkpoint'"),
        "artefact is a directory": ({"artefact": str(tmp_path)}, ArtefactError, "'artefact' parameter"),
        "artefact is /dev/zero": ({"artefact": "/dev/zero"}, ArtefactError, "'artefact' parameter"),
        "artefact is a FIFO": ({"artefact": str(fifo)}, ArtefactError, "'artefact' parameter"),
    }
    for name, (params, error, hint) in cases.items():
        t0 = time.monotonic()
        with pytest.raises(error) as info:
            FrameScorer.from_files(**{**good, **params}, model_class="", layer="", device="cpu")
        assert time.monotonic() - t0 < 10.0, f"{name}: took {time.monotonic() - t0:.1f} s"
        assert hint in str(info.value) and list(params.values())[0] in str(info.value), (name, str(info.value))
    FIGURES["node_path_cases_rejected"] = len(cases)


@pytest.mark.ros
@pytest.mark.slow
def test_node_process_with_a_device_as_checkpoint_exits_1_with_a_message(
    start_process: Callable[..., ChildProcess], monitor_files: Any,
) -> None:
    from lsea_ros_testutil import node_command

    node = start_process(node_command(monitor_files, checkpoint="/dev/zero"), name="node-devzero")
    rc = node.wait(STARTUP_TIMEOUT_S)
    log = node.log()
    assert rc == 1, f"exit code {rc}:\n{log[-3000:]}"
    assert "configure failed" in log and "/dev/zero" in log and "Traceback" not in log, log[-3000:]
    FIGURES["node_process_bad_path_exit_code"] = rc
