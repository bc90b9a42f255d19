"""``--mode both`` bookkeeping without ROS: live mode replaced by a stand-in that echoes offline verdicts."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from lsea_replay_testutil import CAMERA, GT, FakeScorer
from lsea_monitor.replay import cli, live
from lsea_monitor.replay.bag_io import BagReader
from lsea_monitor.replay.errors import LiveModeError
from lsea_monitor.replay.offline import ModeResult, monitor_config, run_offline


def images(n: int, bright: set[int]) -> list[np.ndarray]:
    return [np.full((24, 32, 3), 205 if i in bright else 50, np.uint8) for i in range(n)]


@pytest.fixture
def bag(make_bag):
    ood = {8, 9, 10, 11}
    return make_bag(images=images(16, ood), gt=[i in ood for i in range(16)])


def fake_live(drop: set[int], delta: float = 0.0):
    """A run_live stand-in: the offline verdicts minus ``drop``, scores shifted by ``delta``."""

    def run(bag_reader: BagReader, topic: str, cfg: live.LiveConfig, **kwargs) -> ModeResult:
        res = run_offline(bag_reader, topic, FakeScorer(), monitor_config({}))
        verdicts = [dataclasses.replace(v, score=v.score + delta, source="live", latency_ms=20.0 + v.frame_index)
                    for v in res.verdicts if v.frame_index not in drop]
        return ModeResult(mode="live", frames=res.frames, verdicts=verdicts,
                          extra={"published": len(res.frames), "dropped": len(drop), "threshold": FakeScorer.threshold})

    return run


def run_both(bag_path: Path, out: Path, *extra: str) -> int:
    return cli.main([str(bag_path), "--image-topic", CAMERA, "--gt-topic", GT, "--mode", "both", "--out", str(out),
                     "--quiet", "--artefact", "a", "--checkpoint", "c", *extra])


@pytest.fixture(autouse=True)
def fake_scorer_in_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "load_scorer", lambda cfg: FakeScorer())


def test_both_agree(bag, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(live, "run_live", fake_live(drop={3, 4}))
    assert run_both(bag.path, tmp_path / "e", "--output-bag", str(tmp_path / "e" / "v.mcap")) == 0
    r = json.loads((tmp_path / "e" / "report.json").read_text())
    assert r["status"]["complete"] and r["agreement"]["ok"] and r["agreement"]["n_common"] == 14
    assert r["agreement"]["max_abs_diff"] == 0.0 and r["agreement"]["flag_agreement"] == 1.0
    lv = r["modes"]["live"]
    assert lv["n_judged"] == 14 and lv["judged_fraction"] == pytest.approx(14 / 16) and lv["dropped"] == 2
    assert lv["latency"]["p50_ms"] == pytest.approx(np.percentile([20.0 + i for i in range(16) if i not in (3, 4)], 50))
    assert "Offline vs live: AGREE" in (tmp_path / "e" / "report.md").read_text()
    with BagReader(tmp_path / "e" / "v.mcap") as b:
        t = b.topics()
    assert t["/lsea_monitor/verdict"].count == 16 and t["/lsea_monitor/live/verdict"].count == 14


def test_both_disagree_exits_4(bag, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(live, "run_live", fake_live(drop=set(), delta=1e-4))
    assert run_both(bag.path, tmp_path / "e") == 4
    r = json.loads((tmp_path / "e" / "report.json").read_text())
    assert not r["agreement"]["ok"] and r["agreement"]["max_abs_diff"] == pytest.approx(1e-4)
    assert r["status"]["exit_code"] == 4 and "disagree" in r["status"]["problems"][0]
    assert "offline vs live: DISAGREE" in capsys.readouterr().out
    # a looser tolerance accepts it
    assert run_both(bag.path, tmp_path / "f", "--agreement-tol", "1e-3") == 0


def test_live_failure_keeps_the_offline_figures(bag, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args, **kwargs):
        raise LiveModeError("The monitor node exited with code 1 before it was ready.")

    monkeypatch.setattr(live, "run_live", broken)
    assert run_both(bag.path, tmp_path / "e") == 5
    r = json.loads((tmp_path / "e" / "report.json").read_text())
    assert not r["status"]["complete"] and r["status"]["error_type"] == "LiveModeError"
    assert r["modes"]["offline"]["n_judged"] == 16 and "live" not in r["modes"]
    assert any("node exited" in p for p in r["status"]["problems"])
    assert "INCOMPLETE" in (tmp_path / "e" / "report.md").read_text()


def test_both_refuses_batches(bag, tmp_path: Path) -> None:
    assert run_both(bag.path, tmp_path / "e", "--batch-size", "4") == 2
