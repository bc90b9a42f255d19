"""Soak: a camera process at 30 Hz into a node process for a while, the node watched through /proc.

After a warm-up: resident memory grows < 50 MB, threads and open file descriptors do not grow,
the latency p99 of the last third of the frames is at most 20 % above the first third's (when a
third holds fewer than 1000 frames, as in the 60 s CI run: the median within 20 % and p95 at most
doubled), every processed frame has its verdict and its flag (drops are counted, never silent), and SIGINT then
gives exit code 0.

Tail latency on a 2-core machine measures the machine as much as the node: the p99 criterion is
enforced when other processes used at most 0.25 cores during the stream (measured from /proc/stat
minus the node's, the camera's and pytest's own CPU time), or always with LSEA_SOAK_STRICT=1;
otherwise it is recorded with the reason and a warning. Memory, threads and fds are always checked.

``test_soak_ci``: 60 s (runs in CI). ``test_soak_long``: LSEA_SOAK_S seconds (e.g. 600); marked
``soak`` and deselected unless LSEA_SOAK_S is set.
"""

from __future__ import annotations

import bisect
import json
import os
import signal
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import pytest
from lsea_rel_util import (
    ChildProcess,
    CpuMeter,
    ProcSampler,
    kv,
    percentile,
    read_sent,
    record,
    stamp_of,
    start_camera,
    wait_active,
    wait_health,
)
from lsea_ros_testutil import node_command

pytestmark = [pytest.mark.ros, pytest.mark.slow]

RATE_HZ = 30.0
CI_SOAK_S = 60.0
LONG_SOAK_S = float(os.environ.get("LSEA_SOAK_S", "0") or 0)
RSS_GROWTH_LIMIT_MB = 50.0
# Latency drift: (percentile, most growth allowed) of the last third of the frames over the first.
# p99 needs many frames per third to be more than one scheduler hiccup (a 60 s run judges 200-300 per
# third: its p99 is the 2nd- or 3rd-largest value), so shorter runs check the median, which a leak, a growing
# queue or a slowing model moves as well, within 20 %, and p95 at most doubled. With 200-300 frames a
# third the p95 is about the 12th-largest value: of two thirds drawn from the same run it differs by more
# than 20 % about one time in twenty (measured by splitting one run's frames at random), and a burst of
# scheduler stalls from other processes in one third moves it further: a fresh clone's CI run measured
# +68 % with the median flat (71 ms) on an unchanged node. A lasting slowdown moves the median; growing
# stalls (a heap the collector walks more slowly, a queue that backs up now and then) double the p95.
LONG_RUN_DRIFT_LIMITS = ((99, 0.20),)
SHORT_RUN_DRIFT_LIMITS = ((50, 0.20), (95, 1.00))
MIN_FRAMES_PER_THIRD_FOR_P99 = 1000
EXTERNAL_LOAD_LIMIT_CORES = 0.25


def _soak(duration_s: float, start_process: Callable[..., ChildProcess], make_probe: Callable[[], Any], files: Any,
          artefact: Path, images: list[str], env: dict[str, str], out_dir: Path, section: str) -> dict[str, Any]:
    probe = make_probe()
    # vehicle defaults (best-effort depth-1 images, watchdog 1 s), only the model files and namespace set
    t0 = time.time()
    node = start_process(node_command(files, namespace=probe.namespace, artefact=str(artefact)), name="node")
    wait_active(probe, node, t0)
    warmup_s = min(15.0, duration_s / 4.0)
    cam, sent_log = start_camera(env, out_dir, "soak-cam", topic=probe.image_topic, images=images, rate_hz=RATE_HZ,
                                 duration_s=duration_s, prefix="soak")
    with ProcSampler(node.pid, period_s=1.0) as sampler:
        # CPU competition while streaming (read before the camera exits: its /proc entry goes with it)
        meter = CpuMeter([node.pid, cam.pid, os.getpid()]).__enter__()
        t_meter_end = time.monotonic() + duration_s - 1.0
        while cam.alive() and time.monotonic() < t_meter_end:
            time.sleep(0.2)
        cpu = meter.stop()
        rc_cam = cam.wait(duration_s + 240.0)
        time.sleep(2.0)  # the last verdicts, then one health message after them
        hv = wait_health(probe, lambda v: True, 5.0, "health after the stream", since_wall_s=time.time())
    assert rc_cam == 0, cam.log()[-2000:]
    assert node.alive(), f"the node died during the soak:\n{node.log()[-3000:]}"
    rc = node.stop(signal.SIGINT, timeout_s=30.0)
    assert rc == 0, f"SIGINT after the soak gave exit code {rc}:\n{node.log()[-3000:]}"
    # after the node has stopped: a verdict and its flag travel on two topics, a snapshot taken while
    # the node still publishes (stale verdicts once the stream ends) can hold one without the other
    deadline = time.monotonic() + 5.0
    verdicts, flags, _ = probe.snapshot()
    while len(flags) != len(verdicts) and time.monotonic() < deadline:
        time.sleep(0.1)
        verdicts, flags, _ = probe.snapshot()

    sent = read_sent(sent_log)
    assert sent, "the camera sent nothing"
    sent_at = {(s["sec"], s["nanosec"]): s["t_wall_s"] for s in sent}
    t_first, t_last = sent[0]["t_wall_s"], sent[-1]["t_wall_s"]
    t_warm = t_first + warmup_s
    frames = [r for r in verdicts if r.msg.header.frame_id.startswith("soak:")]
    stale = [r for r in verdicts if kv(r.msg)["reason"].startswith("stale")]

    # accounting: every message received is processed (one verdict and one flag each), dropped or rejected
    received, processed = int(hv["received"]), int(hv["processed"])
    dropped, rejected = int(hv["dropped"]), int(hv["rejected"])
    assert received == processed + dropped + rejected and rejected == 0, hv
    assert len(frames) == processed, f"{processed} frames processed but {len(frames)} verdicts received"
    assert all(kv(r.msg)["valid"] == "true" for r in frames), "a valid camera frame got an ERROR verdict"
    assert len(flags) == len(verdicts), f"{len(verdicts)} verdicts but {len(flags)} flags"
    assert len({stamp_of(r.msg.header) for r in frames}) == len(frames), "a frame got two verdicts"
    assert all(stamp_of(r.msg.header) in sent_at for r in frames)
    assert received <= len(sent)
    # A stale verdict is the node's fault only if the camera did send in the second before it (the
    # vehicle's 1 s watchdog); a camera process starved for a second on a loaded machine is not.
    sent_times = sorted(s["t_wall_s"] for s in sent)
    stale_while_streaming = [r for r in stale if t_first + 1.0 < r.t_wall_s < t_last
                             and r.t_wall_s - sent_times[bisect.bisect_right(sent_times, r.t_wall_s) - 1] < 0.9]
    assert not stale_while_streaming, f"stale verdicts while the camera streamed at {RATE_HZ} Hz"

    # memory, threads, file descriptors: from the end of the warm-up to the end of the stream
    streaming = [s for s in sampler.samples if t_warm <= s["t"] <= t_last]
    assert len(streaming) >= 3, f"too few /proc samples: {len(sampler.samples)}"
    warm, end = streaming[0], streaming[-1]
    growth_mb = end["rss_mb"] - warm["rss_mb"]
    max_growth_mb = max(s["rss_mb"] for s in streaming) - warm["rss_mb"]

    # latency (node-measured: receipt to publication) of the frames after the warm-up, by thirds
    after = [r for r in frames if r.t_wall_s >= t_warm]
    lat = [float(kv(r.msg)["latency_ms"]) for r in after]
    e2e = [(r.t_wall_s - sent_at[stamp_of(r.msg.header)]) * 1e3 for r in after]
    third = len(lat) // 3
    assert third >= 20, f"too few verdicts after the warm-up: {len(lat)}"
    p99_first, p99_last = percentile(lat[:third], 99), percentile(lat[-third:], 99)
    drift_limits = LONG_RUN_DRIFT_LIMITS if third >= MIN_FRAMES_PER_THIRD_FOR_P99 else SHORT_RUN_DRIFT_LIMITS
    drift = [(q, limit, percentile(lat[:third], q), percentile(lat[-third:], q)) for q, limit in drift_limits]
    figures = {
        "duration_s": round(t_last - t_first, 1), "rate_hz": RATE_HZ, "warmup_s": warmup_s,
        "sent": len(sent), "received": received, "processed": processed, "dropped": dropped,
        "transport_lost": len(sent) - received, "verdicts": len(frames), "flags": len(flags),
        "stale_verdicts_while_streaming": len(stale_while_streaming),
        "processed_rate_hz": round(processed / max(t_last - t_first, 1e-9), 2),
        "rss_warm_mb": round(warm["rss_mb"], 1), "rss_end_mb": round(end["rss_mb"], 1),
        "rss_growth_mb": round(growth_mb, 1), "rss_max_growth_mb": round(max_growth_mb, 1),
        "rss_peak_mb": round(end["hwm_mb"], 1),
        "threads_warm": warm["threads"], "threads_end": end["threads"],
        "threads_max": max(s["threads"] for s in streaming),
        "fds_warm": warm["fds"], "fds_end": end["fds"], "fds_max": max(s["fds"] for s in streaming),
        "latency_p50_ms": round(percentile(lat, 50), 1), "latency_p99_first_third_ms": round(p99_first, 1),
        "latency_p99_last_third_ms": round(p99_last, 1), "latency_p99_ratio": round(p99_last / p99_first, 3),
        "e2e_latency_p99_ms": round(percentile(e2e, 99), 1), "sigint_exit_code": rc,
        "loadavg_1m_end": float(Path("/proc/loadavg").read_text().split()[0]),
    }
    figures.update({"latency_p50_first_third_ms": round(percentile(lat[:third], 50), 1),
                    "latency_p50_last_third_ms": round(percentile(lat[-third:], 50), 1), "cpu": cpu})
    infer = [float(kv(r.msg)["inference_ms"]) for r in after]
    figures.update({"inference_p50_ms": round(percentile(infer, 50), 1), "inference_p99_ms": round(percentile(infer, 99), 1)})
    (out_dir / "latency_series.json").write_text(json.dumps({"latency_ms": lat, "inference_ms": infer,
                                                             "t_wall_s": [r.t_wall_s for r in after]}))
    # Tail latency on a 2-core machine measures the machine as much as the node: the p99 criterion
    # is enforced when nothing else competed for the CPUs (or with LSEA_SOAK_STRICT=1).
    strict = os.environ.get("LSEA_SOAK_STRICT") == "1" or cpu["external_cores"] <= EXTERNAL_LOAD_LIMIT_CORES
    figures["latency_drift_check"] = [{"percentile": q, "max_growth": limit, "first_third_ms": round(first, 1),
                                       "last_third_ms": round(last, 1), "ratio": round(last / first, 3)}
                                      for q, limit, first, last in drift]
    figures["latency_p99_check"] = "enforced" if strict else (
        f"not enforced: other processes used {cpu['external_cores']} of {cpu['cpus']} cores")
    record(section, figures)
    assert growth_mb < RSS_GROWTH_LIMIT_MB and max_growth_mb < RSS_GROWTH_LIMIT_MB, figures
    # a leak is lasting growth: the fewest threads (fds) near the end exceed the most near the start.
    # Single samples would also catch a thread or fd that merely exists at that instant (a pool worker
    # started on demand, a socket being replaced).
    window = max(1, min(5, len(streaming) // 3))
    for what in ("threads", "fds"):
        start_most = max(s[what] for s in streaming[:window])
        end_fewest = min(s[what] for s in streaming[-window:])
        assert end_fewest <= start_most, f"{what} grew ({start_most} -> {end_fewest}): {figures}"
    # stable: the last third's latency no more than the limits above the first third's. One-sided: a
    # last third faster than the first (allocator and caches still settling after the warm-up, or a
    # neighbour that went quiet) is not a defect; CI once measured p95 155 -> 114 ms.
    if strict:
        for q, limit, first, last in drift:
            assert last / first - 1.0 <= limit, f"latency p{q} grew by more than {limit:.0%}: {figures}"
    else:
        warnings.warn(f"soak latency p99 first/last third {p99_first:.1f}/{p99_last:.1f} ms not checked: "
                      f"{figures['latency_p99_check']}")
    return figures


def test_soak_ci(start_process: Callable[..., ChildProcess], make_probe: Callable[[], Any], monitor_files: Any,
                 rel_artefacts: dict[str, Path], camera_images: list[str], rel_env: dict[str, str],
                 tmp_path: Path) -> None:
    """30 Hz for 60 s (the CI variant of the soak)."""
    _soak(CI_SOAK_S, start_process, make_probe, monitor_files, rel_artefacts["accept_all"], camera_images, rel_env, tmp_path,
          "soak_ci")


@pytest.mark.soak
def test_soak_long(start_process: Callable[..., ChildProcess], make_probe: Callable[[], Any], monitor_files: Any,
                   rel_artefacts: dict[str, Path], camera_images: list[str], rel_env: dict[str, str],
                   tmp_path: Path) -> None:
    """30 Hz for LSEA_SOAK_S seconds (>= 600 for the release figures); deselected unless it is set."""
    if LONG_SOAK_S <= 0:
        pytest.skip("set LSEA_SOAK_S=<seconds> (e.g. 600) to run the long soak")
    _soak(LONG_SOAK_S, start_process, make_probe, monitor_files, rel_artefacts["accept_all"], camera_images, rel_env,
          tmp_path, "soak_long")
