"""Property-based fuzzing of the node's input through real rclpy, against running node processes.

Hypothesis generates ``sensor_msgs/Image`` and ``sensor_msgs/CompressedImage`` messages (see
lsea_rel_fuzz.py); each one is published to a node process and must end in exactly one verdict with
its header stamp: a valid verdict when the oracle says the node must accept it, else an ERROR
verdict "rejected image: ..." counted in ``rejected`` on /diagnostics. The node never dies, its
memory stays bounded, and its counters account for every message. Bursts then overrun the one-slot
buffer (every message a verdict or a counted drop), and SIGINT / SIGTERM arrive mid-burst: exit 0.

CI size: about 200 messages (LSEA_FUZZ_EXAMPLES scales it; LSEA_FUZZ_SEED replays a run, fixed by default,
LSEA_FUZZ_SEED=random draws a new one).
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, example, given, seed, settings
from lsea_rel_fuzz import (
    MAX_PIXELS,
    CompressedSpec,
    RawSpec,
    compressed_allowed,
    compressed_specs,
    raw_accepted,
    raw_specs,
)
from lsea_rel_util import (
    ChildProcess,
    kv,
    proc_figures,
    record,
    stamp_of,
    wait_active,
    wait_health,
    wait_matched,
)
from lsea_ros_testutil import node_command

pytestmark = [pytest.mark.ros, pytest.mark.slow]

SCALE = int(os.environ.get("LSEA_FUZZ_EXAMPLES", "0") or 0)
N_RAW = max(SCALE * 2 // 3, 1) if SCALE else 130
N_COMPRESSED = max(SCALE - N_RAW, 1) if SCALE else 70
# A fixed seed by default: CI judges the code, not the day's draw (a new input that finds a defect
# must not turn an unrelated change red). LSEA_FUZZ_SEED=random explores; the seed is printed and
# recorded either way, so a run that finds something can be replayed.
_SEED_SETTING = os.environ.get("LSEA_FUZZ_SEED", "").strip()
FUZZ_SEED = (random.SystemRandom().randrange(1 << 32) if _SEED_SETTING == "random"
             else int(_SEED_SETTING) if _SEED_SETTING else 20261130)
VERDICT_TIMEOUT_S = 60.0
RSS_GROWTH_LIMIT_MB = 150.0


class Fuzzer:
    """Sends messages to one node and classifies the verdict of each (matched by header stamp)."""

    def __init__(self, probe: Any, node: ChildProcess, pub: Any, base_sec: int) -> None:
        self.probe, self.node, self.pub = probe, node, pub
        self.sec = base_sec
        self.counts = {"sent": 0, "valid": 0, "invalid": 0, "rejected": 0}
        self.bytes_sent = 0

    def send(self, msg: Any) -> tuple[str, dict[str, str]]:
        if not self.node.alive():
            raise AssertionError(f"the node died (exit {self.node.returncode}):\n{self.node.log()[-3000:]}")
        self.sec += 1
        msg.header.stamp.sec, msg.header.stamp.nanosec = self.sec, 123
        msg.header.frame_id = f"fuzz:{self.sec}"
        key = stamp_of(msg.header)
        self.pub.publish(msg)
        self.counts["sent"] += 1
        self.bytes_sent += len(msg.data)
        found: dict[str, Any] = {}

        def seen(p: Any) -> bool:
            if not self.node.alive():
                raise AssertionError(f"the node died (exit {self.node.returncode}):\n{self.node.log()[-3000:]}")
            for r in reversed(p.verdicts):
                if stamp_of(r.msg.header) == key:
                    found["r"] = r
                    return True
            return False

        self.probe.wait_for(seen, VERDICT_TIMEOUT_S, f"the verdict of fuzz message {self.sec}")
        r = found["r"]
        v = kv(r.msg)
        assert r.msg.header.frame_id == msg.header.frame_id and v["frame_id"] == msg.header.frame_id
        if v["valid"] == "true":
            outcome = "valid"
            assert r.msg.status[0].level in (b"\x00", b"\x01") and np.isfinite(float(v["score"])), v
        elif v["reason"].startswith("rejected image: "):
            outcome = "rejected"
            assert r.msg.status[0].level == b"\x02" and v["is_ood"] == "true" and v["score"] == "nan", v
        else:
            outcome = "invalid"  # accepted but not scorable (model/latent problem)
            assert r.msg.status[0].level == b"\x02" and v["is_ood"] == "true", v
        self.counts[outcome] += 1
        return outcome, v


def _start(start_process: Callable[..., ChildProcess], files: Any, probe: Any, artefact: Path, **params: Any) -> ChildProcess:
    cmd = node_command(files, namespace=probe.namespace, artefact=str(artefact), watchdog_timeout_s=600.0,
                       max_image_pixels=MAX_PIXELS, **{"qos.reliability": "reliable", "qos.depth": 10}, **params)
    return start_process(cmd, name=f"node-{params.get('input_type', 'raw')}")


def _warm(fz: Fuzzer, msgs: list[Any]) -> None:
    for m in msgs:
        outcome, v = fz.send(m)
        assert outcome == "valid", v


def _settled_health(probe: Any, not_before_s: float, timeout_s: float = 60.0) -> dict[str, str]:
    """Health values once two successive /diagnostics messages (after ``not_before_s``) carry the same
    counts and received == processed + dropped + rejected."""
    deadline = time.monotonic() + timeout_s
    seen, previous = 0, None
    while time.monotonic() < deadline:
        health = probe.snapshot()[2]
        if len(health) > seen and health[-1].t_wall_s > not_before_s:
            seen = len(health)
            v = {k.key: k.value for k in health[-1].msg.status[0].values}
            counts = tuple(int(v[k]) for k in ("received", "processed", "dropped", "rejected"))
            if counts == previous and counts[0] == sum(counts[1:]):
                return v
            previous = counts
        time.sleep(0.05)
    raise AssertionError(f"the node's counters did not settle within {timeout_s} s (last: {previous})")


def _burst_then_signal(fz: Fuzzer, make: Callable[[], Any], sig: int, n_burst: int = 40) -> dict[str, Any]:
    """Overrun the one-slot buffer: every message a verdict or a counted drop; then ``sig`` mid-burst -> exit 0."""
    hv0 = wait_health(fz.probe, lambda v: int(v["received"]) == fz.counts["sent"], 15.0, "received == sent")
    t0 = time.time()
    keys = set()
    for i in range(n_burst):
        m = make()
        fz.sec += 1
        m.header.stamp.sec, m.header.stamp.nanosec, m.header.frame_id = fz.sec, 7, f"burst:{i}"
        keys.add(stamp_of(m.header))
        fz.pub.publish(m)
        time.sleep(0.005)
    # settled: the same counts on two successive health messages, every message accounted for
    # (a reliable depth-10 writer may still replace samples the node never saw: transport, not node)
    hv = _settled_health(fz.probe, t0 + 2.0)
    got = {stamp_of(r.msg.header) for r in fz.probe.snapshot()[0] if stamp_of(r.msg.header) in keys}
    received = int(hv["received"]) - int(hv0["received"])
    dropped = int(hv["dropped"]) - int(hv0["dropped"])
    assert int(hv["received"]) == int(hv["processed"]) + int(hv["dropped"]) + int(hv["rejected"]), hv
    assert len(got) + dropped == received, f"burst: {received} received, {len(got)} verdicts, {dropped} dropped"
    assert received >= 1 and len(got) >= 1, hv

    # mid-burst signal: a publisher thread keeps sending while the node is told to stop
    stop = threading.Event()

    def stream() -> None:
        i = 0
        while not stop.is_set():
            m = make()
            m.header.stamp.sec, m.header.frame_id = 1, f"final:{i}"
            fz.pub.publish(m)
            i += 1
            time.sleep(0.01)

    thread = threading.Thread(target=stream, daemon=True)
    thread.start()
    try:
        time.sleep(1.0)
        assert fz.node.alive()
        rc = fz.node.stop(sig, timeout_s=30.0)
    finally:
        stop.set()
        thread.join(timeout=5.0)
    assert rc == 0, f"{signal.Signals(sig).name} mid-burst gave exit code {rc}:\n{fz.node.log()[-3000:]}"
    assert "Traceback" not in fz.node.log(), fz.node.log()[-3000:]
    return {"burst_sent": n_burst, "burst_received": received, "burst_verdicts": len(got), "burst_dropped": dropped,
            f"{signal.Signals(sig).name.lower()}_mid_burst_exit_code": rc}


def test_fuzzed_images_and_compressed_images_each_end_in_a_verdict_or_a_counted_reject(
    start_process: Callable[..., ChildProcess], make_probe: Callable[[], Any], monitor_files: Any,
    rel_artefacts: dict[str, Path], camera_images: list[str],
) -> None:
    from sensor_msgs.msg import CompressedImage, Image

    print(f"\nfuzzing with LSEA_FUZZ_SEED={FUZZ_SEED} (set it to replay this run)")
    probe_raw, probe_cmp = make_probe(), make_probe()
    t0 = time.time()
    # both nodes start at once (start-up is the slow part)
    node_raw = _start(start_process, monitor_files, probe_raw, rel_artefacts["accept_all"])
    node_cmp = _start(start_process, monitor_files, probe_cmp, rel_artefacts["accept_all"], input_type="compressed")
    wait_active(probe_raw, node_raw, t0)
    wait_active(probe_cmp, node_cmp, t0)
    pub_raw, pub_cmp = probe_raw.publisher(Image, probe_raw.image_topic), probe_cmp.publisher(
        CompressedImage, probe_cmp.image_topic)
    wait_matched(pub_raw)
    wait_matched(pub_cmp)
    rgb = cv2.cvtColor(cv2.imread(camera_images[0]), cv2.COLOR_BGR2RGB)
    h, w = rgb.shape[:2]

    def good_raw() -> Any:
        return Image(height=h, width=w, encoding="rgb8", step=w * 3, data=rgb.tobytes())

    def good_jpeg() -> Any:
        return CompressedImage(format="jpeg", data=cv2.imencode(".jpg", rgb[:, :, ::-1])[1].tobytes())

    figures: dict[str, Any] = {"seed": FUZZ_SEED}

    # --- raw Image -------------------------------------------------------------------------------
    fz = Fuzzer(probe_raw, node_raw, pub_raw, base_sec=1000)
    _warm(fz, [good_raw() for _ in range(5)])
    rss0 = proc_figures(node_raw.pid)
    mismatches: list[str] = []

    @seed(FUZZ_SEED)
    @settings(max_examples=N_RAW, deadline=None, database=None, phases=(Phase.explicit, Phase.generate),
              suppress_health_check=list(HealthCheck))
    @given(spec=raw_specs())
    @example(spec=RawSpec("rgb8", 0, 0, 0, 0, 0, 1))  # zero size
    @example(spec=RawSpec("rgb8", (1 << 32) - 1, (1 << 32) - 1, (1 << 32) - 1, 16, 0, 2))  # absurd claim
    @example(spec=RawSpec("rgb8", 1500, 1500, 4500, 4500 * 1500, 0, 3))  # real 6.75 MB, over max_image_pixels
    @example(spec=RawSpec("rgb8", 1400, 1400, 4200, 4200 * 1400, 0, 4))  # real 5.9 MB, accepted, resized
    @example(spec=RawSpec("mono16", 33, 17, 70, 70 * 17, 1, 5))  # big-endian, padded rows
    @example(spec=RawSpec("yuv422", 2, 2, 4, 8, 0, 6))  # a real ROS encoding the node does not support
    def fuzz_raw(spec: RawSpec) -> None:
        outcome, v = fz.send(spec.message())
        expected = "valid" if raw_accepted(spec) else "rejected"
        if outcome != expected:
            mismatches.append(f"{spec}: expected {expected}, got {outcome} ({v['reason']})")

    fuzz_raw()
    assert not mismatches, "\n".join(mismatches[:20])
    rss1 = proc_figures(node_raw.pid)
    hv = wait_health(probe_raw, lambda v: int(v["received"]) == fz.counts["sent"], 15.0, "raw counters")
    assert int(hv["rejected"]) == fz.counts["rejected"] and int(hv["processed"]) == fz.counts["valid"] + \
        fz.counts["invalid"] and int(hv["dropped"]) == 0, (hv, fz.counts)
    raw_counts, raw_bytes = dict(fz.counts), fz.bytes_sent
    burst_raw = _burst_then_signal(fz, good_raw, signal.SIGINT)
    assert rss1["rss_mb"] - rss0["rss_mb"] < RSS_GROWTH_LIMIT_MB, (rss0, rss1)

    # --- CompressedImage -------------------------------------------------------------------------
    fc = Fuzzer(probe_cmp, node_cmp, pub_cmp, base_sec=5000)
    _warm(fc, [good_jpeg() for _ in range(5)])
    crss0 = proc_figures(node_cmp.pid)
    cmismatches: list[str] = []

    @seed(FUZZ_SEED)
    @settings(max_examples=N_COMPRESSED, deadline=None, database=None, phases=(Phase.explicit, Phase.generate),
              suppress_health_check=list(HealthCheck))
    @given(spec=compressed_specs())
    @example(spec=CompressedSpec("png_huge", "png", 8, 8, 1, 0.5))
    @example(spec=CompressedSpec("jpeg_huge", "jpeg", 64, 48, 2, 0.5))
    @example(spec=CompressedSpec("jpeg", "tiff", 16, 16, 3, 0.5))  # good bytes, wrong format string
    @example(spec=CompressedSpec("jpeg_trunc", "jpeg", 160, 120, 4, 0.3))
    @example(spec=CompressedSpec("empty", "", 1, 1, 5, 0.5))
    def fuzz_compressed(spec: CompressedSpec) -> None:
        outcome, v = fc.send(spec.message())
        allowed = compressed_allowed(spec)
        if outcome not in allowed:
            cmismatches.append(f"{spec}: expected {sorted(allowed)}, got {outcome} ({v['reason']})")

    fuzz_compressed()
    assert not cmismatches, "\n".join(cmismatches[:20])
    crss1 = proc_figures(node_cmp.pid)
    hv = wait_health(probe_cmp, lambda v: int(v["received"]) == fc.counts["sent"], 15.0, "compressed counters")
    assert int(hv["rejected"]) == fc.counts["rejected"] and int(hv["dropped"]) == 0, (hv, fc.counts)
    cmp_counts, cmp_bytes = dict(fc.counts), fc.bytes_sent
    burst_cmp = _burst_then_signal(fc, good_jpeg, signal.SIGTERM)
    assert crss1["rss_mb"] - crss0["rss_mb"] < RSS_GROWTH_LIMIT_MB, (crss0, crss1)

    total = {k: raw_counts[k] + cmp_counts[k] for k in raw_counts}
    figures.update({
        "messages_fuzzed": total["sent"], "verdicts_valid": total["valid"], "verdicts_invalid": total["invalid"],
        "rejects_counted": total["rejected"], "mb_sent": round((raw_bytes + cmp_bytes) / 2**20, 1),
        "raw": {**raw_counts, "rss_before_mb": round(rss0["rss_mb"], 1), "rss_after_mb": round(rss1["rss_mb"], 1),
                "rss_peak_mb": round(rss1["hwm_mb"], 1), **burst_raw},
        "compressed": {**cmp_counts, "rss_before_mb": round(crss0["rss_mb"], 1),
                       "rss_after_mb": round(crss1["rss_mb"], 1), "rss_peak_mb": round(crss1["hwm_mb"], 1),
                       **burst_cmp},
        "node_deaths": 0, "elapsed_s": round(time.time() - t0, 1),
    })
    record("fuzz", figures)
