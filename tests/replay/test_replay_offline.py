"""Offline mode and the lsea-replay-eval command line: with a stand-in scorer (fast) and the real monitor."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from lsea_replay_testutil import CAMERA, GT, FakeScorer, frames_rgb
from lsea_monitor.pipeline import Hysteresis
from lsea_monitor.replay import cli
from lsea_monitor.replay.bag_io import BagReader
from lsea_monitor.replay.errors import ParamsFileError
from lsea_monitor.replay.offline import (
    MonitorConfig,
    frame_seed,
    iter_frames,
    load_params_files,
    monitor_config,
    run_offline,
)

CFG = MonitorConfig(raise_after=2, window=3, clear_after=2)


def bright_dark(n: int, bright: set[int]) -> list[np.ndarray]:
    """Frames the FakeScorer scores ~8 (bright = OoD) or ~2 (dark = InD)."""
    rng = np.random.default_rng(1)
    return [np.clip(rng.normal(205 if i in bright else 50, 5, (24, 32, 3)), 0, 255).astype(np.uint8) for i in range(n)]


def expected_flags(is_ood: list[bool | None], cfg: MonitorConfig = CFG) -> list[bool]:
    h = Hysteresis(**cfg.hysteresis())
    return [h.force_raise() if x is None else h.update(x) for x in is_ood]


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
@pytest.mark.parametrize("kind", ["raw", "png"])
def test_offline_scores_every_frame_like_the_node(make_bag, fake_scorer: FakeScorer, storage: str, kind: str) -> None:
    ood = {3, 4, 5, 6}
    spec = make_bag(storage=storage, kind=kind, images=bright_dark(10, ood))
    with BagReader(spec.path) as bag:
        res = run_offline(bag, CAMERA, fake_scorer, CFG)
    assert res.complete and not res.error
    assert [v.frame_index for v in res.verdicts] == list(range(10))
    assert [v.stamp_ns for v in res.verdicts] == spec.stamps_ns
    want = [float(im.astype(np.float64).mean() / 255 * 10) for im in spec.images]
    np.testing.assert_allclose([v.score for v in res.verdicts], want, rtol=0, atol=1e-12)
    assert [v.raw_is_ood for v in res.verdicts] == [i in ood for i in range(10)]
    assert [v.flag for v in res.verdicts] == expected_flags([i in ood for i in range(10)])
    assert all(v.valid and math.isfinite(v.latency_ms) for v in res.verdicts)
    assert fake_scorer.calls == [1] * 10  # one frame per call, as the node
    assert res.extra["per_frame_ms"] > 0 and res.extra["duplicate_header_stamps"] == 0


def test_undecodable_frame_raises_the_flag_at_once(make_bag, fake_scorer: FakeScorer) -> None:
    spec = make_bag(images=bright_dark(8, set()), bad_data_at=[5])
    with BagReader(spec.path) as bag:
        res = run_offline(bag, CAMERA, fake_scorer, CFG)
    bad = res.verdicts[5]
    assert not bad.valid and bad.flag and math.isnan(bad.score) and bad.reason.startswith("rejected image:")
    assert [v.flag for v in res.verdicts] == expected_flags([False] * 5 + [None] + [False] * 2)


def test_batches_give_the_same_scores(make_bag, fake_scorer: FakeScorer) -> None:
    spec = make_bag(images=bright_dark(7, {2, 3}))
    with BagReader(spec.path) as bag:
        one = run_offline(bag, CAMERA, FakeScorer(), CFG)
        three = run_offline(bag, CAMERA, fake_scorer, CFG, batch_size=3)
    assert fake_scorer.calls == [3, 3, 1]
    assert [v.score for v in one.verdicts] == [v.score for v in three.verdicts]
    assert [v.flag for v in one.verdicts] == [v.flag for v in three.verdicts]


def test_truncated_bag_gives_an_incomplete_result(make_bag, fake_scorer: FakeScorer) -> None:
    spec = make_bag(storage="sqlite3", images=frames_rgb(30, 64, 128))
    f = next(spec.path.glob("*.db3"))
    os.truncate(f, int(f.stat().st_size * 0.999))
    with BagReader(spec.path) as bag:
        res = run_offline(bag, CAMERA, fake_scorer, CFG)
    assert not res.complete and "corrupted or truncated" in res.error
    assert 0 < len(res.verdicts) == len(res.frames) < 30


def test_frame_seed_is_the_cores() -> None:
    from lsea_monitor.pipeline import frame_seed as core_frame_seed

    for stamp in (0, 1_700_000_000_123_456_789, 2**64 - 1):
        assert frame_seed(stamp) == core_frame_seed(stamp)
    assert frame_seed(1_700_000_000_123_456_789) == 1_700_000_000_123_456_789


# --- the node's parameters ---------------------------------------------------------------------


def test_params_files_follow_ros_node_matching(tmp_path: Path) -> None:
    a = tmp_path / "a.yaml"
    a.write_text("""/**/lsea_monitor:
  ros__parameters:
    checkpoint: /m/best.ckpt
    device: cpu
    hysteresis: {raise_after: 2, window: 4, clear_after: 6}
other_node:
  ros__parameters: {device: cuda}
""")
    b = tmp_path / "b.yaml"
    b.write_text("""/robot/lsea_monitor:
  ros__parameters:
    artefact: /m/det.safetensors
lsea_monitor:
  ros__parameters:
    device: cuda
""")
    root = load_params_files([a, b])
    assert root == {"checkpoint": "/m/best.ckpt", "device": "cuda", "hysteresis.raise_after": 2,
                    "hysteresis.window": 4, "hysteresis.clear_after": 6}
    ns = load_params_files([a, b], namespace="robot")
    assert ns["artefact"] == "/m/det.safetensors" and ns["device"] == "cpu"
    cfg = monitor_config(ns, {"device": "cuda:0", "layer": None})
    assert (cfg.raise_after, cfg.window, cfg.clear_after) == (2, 4, 6)
    assert cfg.device == "cuda:0" and cfg.checkpoint == "/m/best.ckpt" and cfg.layer == ""


@pytest.mark.parametrize("text, match", [
    ("lsea_monitor: {ros__parameters: {hysteresis: {raise_after: 5, window: 3}}}", "raise_after <= window"),
    ("lsea_monitor: {ros__parameters: {hysteresis: {window: 2.5}}}", "must be an integer"),
    ("lsea_monitor: {ros__parameters: {trust_checkpoint: 'false'}}", "must be true or false"),
    ("lsea_monitor: {params: {}}", "no 'ros__parameters'"),
    ("[1, 2]", "expected '<node name>"),
    ("lsea_monitor: {ros__parameters: {a: [1}", "not valid YAML"),
])
def test_bad_params_files(tmp_path: Path, text: str, match: str) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(text)
    with pytest.raises(ParamsFileError, match=match):
        monitor_config(load_params_files([f]))


def test_repository_params_files_load() -> None:
    root = Path(__file__).resolve().parents[2] / "config"
    cfg = monitor_config(load_params_files([root / "lsea_monitor.params.yaml", root / "demo.params.yaml"]))
    assert cfg.checkpoint.endswith(".ckpt") and cfg.artefact.endswith(".safetensors")
    assert (cfg.raise_after, cfg.window, cfg.clear_after) == (2, 3, 3)


# --- the command line with a stand-in scorer ------------------------------------------------------


@pytest.fixture
def cli_fake(monkeypatch: pytest.MonkeyPatch) -> FakeScorer:
    scorer = FakeScorer()
    monkeypatch.setattr(cli, "load_scorer", lambda cfg: scorer)
    return scorer


def run_cli(bag: Path, out: Path, *extra: str, topic: str = CAMERA) -> int:
    return cli.main([str(bag), "--image-topic", topic, "--mode", "offline", "--out", str(out), "--quiet",
                     "--artefact", "unused.safetensors", "--checkpoint", "unused.ckpt", *extra])


def write_gt_files(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "gt.yaml").write_text("intervals:\n  - {start_s: 1.0, end_s: 1.4, label: fog}\n")
    (tmp_path / "gt.csv").write_text("start_s,end_s,label\n1.0,1.4,fog\n")
    return {"yaml": str(tmp_path / "gt.yaml"), "csv": str(tmp_path / "gt.csv")}


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
@pytest.mark.parametrize("source", ["topic", "yaml", "csv", "none"])
def test_cli_offline_report(make_bag, tmp_path: Path, cli_fake: FakeScorer, capsys: pytest.CaptureFixture,
                            storage: str, source: str) -> None:
    ood = {10, 11, 12, 13}  # 1.0 s to 1.4 s, after 10 InD frames that lower the initially raised flag
    spec = make_bag(storage=storage, images=bright_dark(18, ood), gt=[i in ood for i in range(18)])
    files = write_gt_files(tmp_path)
    gt_args = {"topic": ["--gt-topic", GT], "yaml": ["--gt-file", files["yaml"]], "csv": ["--gt-file", files["csv"]],
               "none": []}[source]
    out = tmp_path / "eval"
    assert run_cli(spec.path, out, *gt_args, "--output-bag", str(out / "verdicts.mcap")) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["status"]["complete"] and report["status"]["exit_code"] == 0
    assert report["bag"]["storage"] == storage and report["bag"]["n_frames"] == 18
    m = report["modes"]["offline"]
    assert m["n_judged"] == 18 and m["judged_fraction"] == 1.0 and m["latency"]["p50_ms"] > 0
    if source == "none":
        assert report["ground_truth"]["source"] == "none" and "detection_quality" not in m
    else:
        assert report["ground_truth"]["source"].startswith(source)
        dq = m["detection_quality"]
        assert dq["auroc"] == 1.0 and dq["fpr_at_95_tpr_ood_positive"] == 0.0
        assert dq["fpr_at_95_tpr_ind_positive"] == 0.0 and dq["n_ood"] == 4
        delay = m["detection_delay"]["summary"]
        # raise_after 3 of 5 (the defaults): flag up at the 3rd OoD frame, 0.2 s after the onset
        assert delay["n_detected"] == 1 and delay["delay_s_mean"] == pytest.approx(0.2)
        assert m["false_alarms"]["false_alarms"] == 0
    for name in ("report.md", "timeline.png", "frames_offline.csv", "verdicts.mcap"):
        assert (out / name).is_file(), name
    assert "(COMPLETE)" in (out / "report.md").read_text()
    with BagReader(out / "verdicts.mcap") as bag:
        assert bag.topics()["/lsea_monitor/verdict"].count == 18
    assert "lsea-replay-eval: COMPLETE (exit 0)" in capsys.readouterr().out


def test_cli_truncated_bag_is_incomplete(make_bag, tmp_path: Path, cli_fake: FakeScorer,
                                         capsys: pytest.CaptureFixture) -> None:
    spec = make_bag(storage="sqlite3", images=frames_rgb(30, 64, 128))
    f = next(spec.path.glob("*.db3"))
    os.truncate(f, int(f.stat().st_size * 0.999))
    out = tmp_path / "eval"
    assert run_cli(spec.path, out) == 3
    report = json.loads((out / "report.json").read_text())
    assert report["status"]["complete"] is False and report["status"]["exit_code"] == 3
    assert "corrupted or truncated" in report["status"]["problems"][0]
    m = report["modes"]["offline"]
    assert 0 < m["n_judged"] < 30 and m["n_frames"] == report["bag"]["n_frames"] == 30
    assert m["judged_fraction"] == m["n_judged"] / 30 and m["dropped"] == 30 - m["n_judged"]
    assert (out / "report.md").read_text().startswith("# Replay evaluation: bag (INCOMPLETE)")
    assert "INCOMPLETE (exit 3)" in capsys.readouterr().out


def test_cli_no_valid_verdict_is_not_a_result(make_bag, tmp_path: Path, cli_fake: FakeScorer,
                                              capsys: pytest.CaptureFixture) -> None:
    """Every frame undecodable: the run must not read 'COMPLETE, detected 1/1, 0 false alarms'."""
    ood = {4, 5, 6}
    spec = make_bag(images=bright_dark(10, ood), gt=[i in ood for i in range(10)], bad_data_at=list(range(10)))
    out = tmp_path / "eval"
    assert run_cli(spec.path, out, "--gt-topic", GT) == 6
    report = json.loads((out / "report.json").read_text())
    assert report["status"]["complete"] is False and report["status"]["exit_code"] == 6
    assert any("no frame got a valid verdict" in p for p in report["status"]["problems"])
    m = report["modes"]["offline"]
    assert m["n_valid"] == 0 and m["detection_delay"]["summary"]["n_detected"] == 0
    assert m["detection_delay"]["summary"]["armed_at_s"] is None  # invalid frames keep the flag raised
    printed = capsys.readouterr().out
    assert "INCOMPLETE (exit 6)" in printed and "the flag was NEVER lowered" in printed


def test_cli_startup_raise_is_not_a_detection(make_bag, tmp_path: Path, cli_fake: FakeScorer,
                                              capsys: pytest.CaptureFixture) -> None:
    """OoD from the first frame, a monitor that scores every frame InD: the start-up raise (fail
    closed) must not count as detecting it."""
    ood = {0, 1, 2, 3}
    spec = make_bag(images=bright_dark(16, set()), gt=[i in ood for i in range(16)])  # all dark: all InD
    out = tmp_path / "eval"
    assert run_cli(spec.path, out, "--gt-topic", GT) == 0
    dd = json.loads((out / "report.json").read_text())["modes"]["offline"]["detection_delay"]
    assert dd["intervals"][0]["status"] == "not judged" and dd["summary"]["n_detected"] == 0
    assert dd["summary"]["n_not_judged"] == 1 and dd["summary"]["detection_rate"] is None  # NaN in JSON: null
    assert "detected 0/0 (1 not judged)" in capsys.readouterr().out
    assert "| 0 | - | 0.00 | 0.40 | 4 | NOT JUDGED |" in (out / "report.md").read_text()


@pytest.mark.parametrize("case, code, match", [
    ("missing_topic", 2, "'/front/image' is not in bag"),
    ("empty", 2, "is empty: it holds no message"),
    ("no_bag", 2, "does not exist"),
    ("encoding", 2, "unsupported image encoding '32FC1'"),
    ("truncated_open", 3, "corrupted or truncated"),
    ("bad_gt", 2, "needs both start_s and end_s"),
    ("output_bag_exists", 2, "already exists; remove it or choose another path"),
])
def test_cli_errors(make_bag, tmp_path: Path, cli_fake: FakeScorer, capsys: pytest.CaptureFixture, case: str,
                    code: int, match: str) -> None:
    from rosbags.rosbag2 import Writer

    topic, extra = CAMERA, []
    if case == "missing_topic":
        bag, topic = make_bag(n=2).path, "/front/image"
    elif case == "empty":
        bag = tmp_path / "empty"
        with Writer(bag, version=9) as w:
            w.add_connection(CAMERA, "sensor_msgs/msg/Image", typestore=__import__(
                "lsea_monitor.replay.decode", fromlist=["typestore"]).typestore())
    elif case == "no_bag":
        bag = tmp_path / "missing_bag"
    elif case == "encoding":
        bag = make_bag(n=2, encoding="32FC1").path
    elif case == "truncated_open":
        bag = make_bag(storage="mcap", n=4).path
        f = next(bag.glob("*.mcap"))
        os.truncate(f, f.stat().st_size // 2)
    elif case == "output_bag_exists":  # refused before any frame is scored, not after
        bag = make_bag(n=2).path
        (tmp_path / "old.mcap").write_bytes(b"x")
        extra = ["--output-bag", str(tmp_path / "old.mcap")]
    else:
        bag = make_bag(n=2).path
        (tmp_path / "gt.yaml").write_text("intervals:\n  - {start_s: 1.0}\n")
        extra = ["--gt-file", str(tmp_path / "gt.yaml")]
    out = tmp_path / "eval"
    assert run_cli(bag, out, *extra, topic=topic) == code
    err = capsys.readouterr().err
    assert match in err and err.startswith("error: ")
    if case not in ("bad_gt", "output_bag_exists"):
        assert str(bag) in err  # names the bag
    report = json.loads((out / "report.json").read_text())
    assert report["status"]["complete"] is False and report["status"]["exit_code"] == code
    assert match in report["status"]["error"]
    assert not cli_fake.calls  # nothing was scored


def test_cli_out_that_is_a_file_is_a_usage_error(make_bag, tmp_path: Path, cli_fake: FakeScorer,
                                                 capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "taken").write_text("not a folder")
    assert run_cli(make_bag(n=2).path, tmp_path / "taken") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot use --out ") and "Traceback" not in err
    assert not cli_fake.calls


# --- the real monitor ------------------------------------------------------------------------


def monitor_args(m) -> list[str]:
    return ["--artefact", str(m.artefact), "--checkpoint", str(m.checkpoint), "--model-class", m.model_class,
            "--layer", m.layer, "--device", "cpu"]


@pytest.mark.slow
def test_real_monitor_offline_is_deterministic_and_equals_the_core(replay_monitor, demo_bags, tmp_path: Path) -> None:
    from lsea_monitor.pipeline import FrameScorer

    bag = demo_bags["mcap_raw"]
    args = [str(bag), "--image-topic", "/camera/image_raw", "--gt-file", str(bag / "ground_truth.yaml"), "--mode",
            "offline", "--quiet", *monitor_args(replay_monitor)]
    assert cli.main([*args, "--out", str(tmp_path / "a")]) == 0
    assert cli.main([*args, "--out", str(tmp_path / "b"), "--output-bag", str(tmp_path / "b" / "v.mcap")]) == 0
    a = json.loads((tmp_path / "a" / "report.json").read_text())
    csv_a = (tmp_path / "a" / "frames_offline.csv").read_text().splitlines()
    csv_b = (tmp_path / "b" / "frames_offline.csv").read_text().splitlines()
    strip = [",".join(r.split(",")[:10]) for r in csv_a], [",".join(r.split(",")[:10]) for r in csv_b]
    assert strip[0] == strip[1]  # same scores and flags, to the last digit (latency columns differ)
    m = a["modes"]["offline"]
    assert m["n_judged"] == 16 and m["n_valid"] == 16 and a["ground_truth"]["source"].startswith("yaml")
    assert m["detection_quality"]["available"] and 0.0 <= m["detection_quality"]["auroc"] <= 1.0
    assert len(m["detection_delay"]["intervals"]) == 3
    # the same numbers from the core directly, seeded the same way
    scorer = FrameScorer.from_files(checkpoint=str(replay_monitor.checkpoint), model_class=replay_monitor.model_class,
                                    layer=replay_monitor.layer, artefact=str(replay_monitor.artefact), device="cpu")
    with BagReader(bag) as b:
        frames = list(iter_frames(b, "/camera/image_raw"))
    direct = [scorer.score_images([d.rgb], seed=scorer.frame_seed(d.frame.header_stamp_ns))[0].score
              for d in frames[:4]]
    replayed = [float(r.split(",")[7]) for r in csv_a[1:5]]
    assert replayed == direct
    assert a["monitor"]["threshold"] == pytest.approx(scorer.threshold)


@pytest.mark.slow
def test_real_monitor_compressed_sqlite3_with_gt_topic(replay_monitor, demo_bags, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    code = cli.main([str(demo_bags["sqlite3_png"]), "--image-topic", "/camera/image_raw/compressed", "--gt-topic",
                     "/ground_truth/ood", "--mode", "offline", "--quiet", "--out", str(out),
                     *monitor_args(replay_monitor)])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["bag"]["msgtype"] == "sensor_msgs/msg/CompressedImage" and report["bag"]["storage"] == "sqlite3"
    assert report["modes"]["offline"]["n_valid"] == 16
    assert [iv["start_s"] for iv in report["ground_truth"]["intervals"]] == pytest.approx([0.4, 0.8, 1.2])


@pytest.mark.slow
def test_real_monitor_with_a_pickling_checkpoint_needs_trust_checkpoint(replay_monitor, demo_bags, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture) -> None:
    """--trust-checkpoint is the node's trust_checkpoint: a checkpoint that pickles objects, bound to
    the artefact by its SHA-256, is refused without it (a clear error) and scored with it."""
    import argparse
    from dataclasses import replace

    import torch

    from lsea_monitor.artefact import DetectorArtefact, sha256_file

    ckpt = torch.load(replay_monitor.checkpoint, map_location="cpu", weights_only=True)
    ckpt["training_args"] = argparse.Namespace(lr=0.01)  # what training scripts often pickle
    pickling = tmp_path / "pickling.ckpt"
    torch.save(ckpt, pickling)
    art = DetectorArtefact.load(replay_monitor.artefact)
    bound = replace(art, binding=replace(art.binding, checkpoint_sha256=sha256_file(pickling))).save(
        tmp_path / "bound.safetensors")
    args = [str(demo_bags["mcap_raw"]), "--image-topic", "/camera/image_raw", "--mode", "offline", "--quiet",
            "--checkpoint", str(pickling), "--artefact", str(bound), "--device", "cpu"]
    capsys.readouterr()
    assert cli.main([*args, "--out", str(tmp_path / "refused")]) == 2
    assert "trust_checkpoint" in capsys.readouterr().err
    assert cli.main([*args, "--out", str(tmp_path / "trusted"), "--trust-checkpoint"]) == 0
    report = json.loads((tmp_path / "trusted" / "report.json").read_text())
    assert report["modes"]["offline"]["n_valid"] == 16


def test_monitor_config_defaults_and_names_are_the_nodes() -> None:
    """One source of truth: the replay's config takes the node's parameter names and defaults."""
    from dataclasses import fields

    from lsea_monitor.node_params import BY_NAME, MonitorParams
    from lsea_monitor.replay.offline import ROS_NAMES

    node = MonitorParams()
    for ros_name, fld in ROS_NAMES.items():
        assert BY_NAME[ros_name].field == fld
        assert getattr(MonitorConfig(), fld) == getattr(node, fld) == BY_NAME[ros_name].default
    assert set(ROS_NAMES.values()) == {f.name for f in fields(MonitorConfig)}


@pytest.mark.parametrize("rate", [0.0, -1.0, float("nan"), float("inf")])
def test_live_rate_must_be_finite_and_positive(make_bag, rate: float) -> None:
    from lsea_monitor.replay.errors import LiveModeError
    from lsea_monitor.replay.live import LiveConfig, run_live

    with BagReader(make_bag(n=2).path) as bag, pytest.raises(LiveModeError, match="--rate must be a finite number"):
        run_live(bag, CAMERA, LiveConfig(rate=rate))
