"""Live mode: play the bag's image topic into the ROS graph against the monitor node and record its verdicts.

The bag's raw CDR is published as recorded (no re-encoding) at ``rate`` x bag time, with
``/clock`` (``rosgraph_msgs/Clock``, bag time) published before every frame and at 20 Hz in between.
The node is either started here as a child process (``python -m lsea_monitor.node --ros-args
--params-file ... -r image:=<topic> -p use_sim_time:=true``) and stopped at the end, or an already
running one is used (``start_node=False``; watched through the graph: a node that stops subscribing
to the images or publishing verdicts for ``NODE_GONE_GRACE_S`` ends the run as an error). Its
``~/verdict`` (DiagnosticArray, header = the image's) and ``~/ood`` (Bool) are recorded; verdicts
are matched to frames by header stamp.

Measured: end-to-end latency (image published -> verdict received, one monotonic clock, this
process), the node's own reported latency, dropped frames (published without a verdict) and the
node's health counters from ``/diagnostics``.

Network rule: unless the caller set them, ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` and, when the
node is started here, a random ``ROS_DOMAIN_ID`` (10..99) are used, for this process and the child.
"""

from __future__ import annotations

import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lsea_monitor.node_cameras import is_watchdog_reason
from lsea_monitor.process import die_with_parent
from lsea_monitor.replay import decode
from lsea_monitor.replay.bag_io import BagReader
from lsea_monitor.replay.errors import CorruptBagError, LiveModeError
from lsea_monitor.replay.offline import ModeResult, Prefetch, iter_frames
from lsea_monitor.replay.records import Frame, Verdict

CLOCK_PERIOD_S = 0.05
NODE_GONE_GRACE_S = 0.5  #: the node out of the graph this long during a run = it has gone


@dataclass(frozen=True)
class LiveConfig:
    rate: float = 1.0  #: playback speed, x bag time
    node_name: str = "lsea_monitor"
    namespace: str = ""
    start_node: bool = True  #: start the node here (else use a running one)
    params_files: tuple[str, ...] = ()
    node_params: Mapping[str, Any] = field(default_factory=dict)  #: ROS name -> value, as -p name:=value
    startup_timeout_s: float = 180.0  #: node start, model load, warm-up and discovery
    idle_timeout_s: float = 3.0  #: after the last frame, stop when no verdict came for this long ...
    drain_timeout_s: float = 60.0  #: ... or at the latest after this
    use_sim_time: bool = True  #: give the started node -p use_sim_time:=true (it follows /clock)
    publish_clock: bool = True
    restamp: bool = False  #: header stamp := bag time (re-serialised) for bags with repeated stamps
    reliable: bool = True  #: image publisher reliability (a reliable publisher serves both kinds of subscriber)
    log_path: str | None = None  #: node stdout/stderr (started node); None: a temporary file
    python: str = sys.executable

    def node_fqn(self) -> str:
        ns = "/" + self.namespace.strip("/") if self.namespace.strip("/") else ""
        return f"{ns}/{self.node_name}"


def child_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """A clean environment for a child ROS process (the wheels' bootstrap mark dropped, see environment.md)."""
    env = {k: v for k, v in (base or os.environ).items() if not k.startswith("_ROS_WHEELS")}
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def node_command(cfg: LiveConfig, image_topic: str, input_type: str) -> list[str]:
    cmd = [cfg.python, "-m", "lsea_monitor.node", "--ros-args", "-r", f"__node:={cfg.node_name}"]
    if cfg.namespace.strip("/"):
        cmd += ["-r", f"__ns:=/{cfg.namespace.strip('/')}"]
    for f in cfg.params_files:
        cmd += ["--params-file", str(f)]
    values = {**cfg.node_params, "input_type": input_type}
    if cfg.use_sim_time:
        values["use_sim_time"] = True
    for k, v in values.items():
        text = ("true" if v else "false") if isinstance(v, bool) else str(v)
        cmd += ["-p", f"{k}:={text}"]
    cmd += ["-r", f"image:={image_topic}"]
    return cmd


def _tail(path: Path, n_chars: int = 3000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return text[-n_chars:].strip()


class NodeProcess:
    """The monitor node as a child process, stopped with SIGINT (then SIGTERM, then SIGKILL)."""

    def __init__(self, cmd: Sequence[str], env: Mapping[str, str], log_path: Path) -> None:
        self.cmd, self.log_path = list(cmd), log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(self.cmd, env=dict(env), stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, preexec_fn=die_with_parent())

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout_s: float = 20.0) -> int | None:
        try:
            for sig, wait_s in ((signal.SIGINT, timeout_s), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
                if self.proc.poll() is not None:
                    break
                self.proc.send_signal(sig)
                try:
                    self.proc.wait(timeout=wait_s)
                except subprocess.TimeoutExpired:
                    continue
            return self.proc.poll()
        finally:
            self._log.close()


def _parse_verdict(msg: Any) -> dict[str, Any] | None:
    if not msg.status:
        return None
    values = {kv.key: kv.value for kv in msg.status[0].values}

    def num(key: str) -> float:
        try:
            return float(values.get(key, "nan"))
        except ValueError:
            return math.nan

    return {"header_stamp_ns": decode.stamp_ns(msg.header.stamp), "score": num("score"),
            "flag": values.get("is_ood") == "true", "raw_is_ood": values.get("raw_is_ood") == "true",
            "valid": values.get("valid") == "true", "reason": values.get("reason", ""),
            "node_latency_ms": num("latency_ms"), "threshold": num("threshold"), "mc_samples": values.get("mc_samples")}


def run_live(bag: BagReader, topic: str, cfg: LiveConfig, *, log: Callable[[str], None] = lambda s: None
             ) -> ModeResult:
    """Play ``topic`` against the node and collect its verdicts (see the module docstring).

    Raises
    ------
    LiveModeError
        The node did not start, exited early or left the graph during playback, or the graph never
        matched (timeouts).
    """
    if not (math.isfinite(cfg.rate) and cfg.rate > 0):  # nan passes a "<= 0" test
        raise LiveModeError(f"--rate must be a finite number > 0, got {cfg.rate}.")
    info = bag.require_topic(topic, decode.IMAGE_TYPES, what="image topic")
    input_type = decode.IMAGE_TYPES[info.msgtype]
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    if cfg.start_node and "ROS_DOMAIN_ID" not in os.environ:
        os.environ["ROS_DOMAIN_ID"] = str(random.SystemRandom().randint(10, 99))
    try:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        from rosgraph_msgs.msg import Clock
        from sensor_msgs.msg import CompressedImage, Image
        from std_msgs.msg import Bool
    except ImportError as err:
        raise LiveModeError(f"Live mode needs rclpy and the ROS message packages ({err}); install lsea-monitor[ros] "
                            "or source ROS 2. Offline mode works without them.") from err

    fqn = cfg.node_fqn()
    result = ModeResult(mode="live", extra={"rate": cfg.rate, "node": fqn, "started_node": cfg.start_node,
                                            "ros_domain_id": os.environ.get("ROS_DOMAIN_ID", "0"),
                                            "restamp": cfg.restamp})
    node_proc: NodeProcess | None = None
    if cfg.start_node:
        log_path = Path(cfg.log_path) if cfg.log_path else Path(os.environ.get("TMPDIR", "/tmp")) / \
            f"lsea_replay_node_{os.getpid()}.log"
        cmd = node_command(cfg, topic, input_type)
        node_proc = NodeProcess(cmd, child_env(), log_path)
        result.extra.update({"node_command": " ".join(cmd), "node_log": str(log_path)})
        log(f"[live] started the node (pid {node_proc.proc.pid}), log {log_path}")

    context = rclpy.Context()
    rclpy.init(context=context)
    player = rclpy.create_node("lsea_replay_player", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(player)
    spinner = threading.Thread(target=executor.spin, name="replay-spin", daemon=True)
    lock = threading.Lock()
    verdicts: list[tuple[int, dict[str, Any]]] = []  # (recv monotonic ns, parsed)
    flags: list[bool] = []
    health: dict[str, str] = {}
    published: dict[int, deque[tuple[int, int]]] = {}  # header stamp -> (frame index, publish monotonic ns)
    last_verdict_ns = [0]
    frame_verdicts = [0]
    out_qos = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)

    def on_verdict(msg: Any) -> None:
        now = time.monotonic_ns()
        parsed = _parse_verdict(msg)
        if parsed is not None:
            with lock:
                verdicts.append((now, parsed))
                # frame verdicts only: the node's own stale/stalled ones (its clock's stamp) answer no frame
                if not is_watchdog_reason(parsed["reason"]):
                    frame_verdicts[0] += 1
                    last_verdict_ns[0] = now

    def on_ood(msg: Any) -> None:
        with lock:
            flags.append(bool(msg.data))

    def on_health(msg: Any) -> None:
        for st in msg.status:
            if st.name == f"{cfg.node_name}: health" or st.name.endswith(f"{cfg.node_name}: health"):
                with lock:
                    health.clear()
                    health.update({kv.key: kv.value for kv in st.values})
                    health["_level"] = str(int.from_bytes(st.level, "little") if isinstance(st.level, bytes)
                                           else int(st.level))

    player.create_subscription(DiagnosticArray, f"{fqn}/verdict", on_verdict, out_qos)
    player.create_subscription(Bool, f"{fqn}/ood", on_ood, out_qos)
    player.create_subscription(DiagnosticArray, "/diagnostics", on_health, out_qos)
    msg_cls = CompressedImage if input_type == "compressed" else Image
    img_qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE if cfg.reliable else
                         ReliabilityPolicy.BEST_EFFORT, history=HistoryPolicy.KEEP_LAST)
    image_pub = player.create_publisher(msg_cls, topic, img_qos)
    clock_pub = player.create_publisher(Clock, "/clock", QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE,
                                                                    history=HistoryPolicy.KEEP_LAST))
    clock_state = {"bag0": None, "wall0": 0.0, "last": None}

    def publish_clock(stamp_ns: int) -> None:
        if not cfg.publish_clock:
            return
        c = Clock()
        c.clock.sec, c.clock.nanosec = int(stamp_ns // 1_000_000_000), int(stamp_ns % 1_000_000_000)
        clock_pub.publish(c)
        clock_state["last"] = stamp_ns

    def on_clock_timer() -> None:
        bag0 = clock_state["bag0"]
        if bag0 is None:
            return
        now_bag = bag0 + int((time.monotonic() - clock_state["wall0"]) * cfg.rate * 1e9)
        if clock_state["last"] is None or now_bag > clock_state["last"]:
            publish_clock(now_bag)

    player.create_timer(CLOCK_PERIOD_S, on_clock_timer)

    def node_in_graph() -> bool:
        return image_pub.get_subscription_count() >= 1 and player.count_publishers(f"{fqn}/verdict") >= 1

    left_since: list[float | None] = [None]

    def node_left_graph() -> bool:
        """The node no longer subscribes to the images or publishes verdicts, for NODE_GONE_GRACE_S in a row.

        The only sign of an attached node's death or deactivation (a started one is also watched as a
        process); the grace keeps a momentary graph update from ending a run."""
        if node_in_graph():
            left_since[0] = None
            return False
        now = time.monotonic()
        if left_since[0] is None:
            left_since[0] = now
        return now - left_since[0] >= NODE_GONE_GRACE_S

    def left_graph_error(when: str) -> LiveModeError:
        return LiveModeError(f"The monitor node {fqn} left the ROS graph {when} (no subscriber on {topic} or no "
                             f"publisher of {fqn}/verdict for {NODE_GONE_GRACE_S:g} s): it exited, crashed or was "
                             "deactivated, so the frames played since have no verdict. Check the node, then rerun.",
                             bag=str(bag.path))
    spinner.start()
    source: Prefetch | None = None
    try:
        # 1. wait for the node: subscribed to the images, publishing verdicts
        t0 = time.monotonic()
        bag_start = bag.info().start_ns
        while True:
            if node_proc is not None and not node_proc.alive():
                raise LiveModeError(f"The monitor node exited with code {node_proc.proc.returncode} before it was "
                                    f"ready. Its log ({node_proc.log_path}):\n{_tail(node_proc.log_path)}",
                                    bag=str(bag.path))
            if node_in_graph():
                break
            if time.monotonic() - t0 > cfg.startup_timeout_s:
                hint = (f" Its log ({node_proc.log_path}):\n{_tail(node_proc.log_path)}" if node_proc else
                        f" Is {fqn} running and active, on ROS_DOMAIN_ID={os.environ.get('ROS_DOMAIN_ID', '0')} "
                        f"with its 'image' remapped to {topic}?")
                raise LiveModeError(f"No monitor node {fqn} subscribed to {topic} and publishing {fqn}/verdict "
                                    f"within {cfg.startup_timeout_s:g} s.{hint}", bag=str(bag.path))
            publish_clock(bag_start)
            time.sleep(0.1)
        result.extra["startup_s"] = round(time.monotonic() - t0, 3)
        time.sleep(0.5)  # let the matched endpoints settle before the first frame
        with lock:
            n_before = frame_verdicts[0]
        log(f"[live] node ready after {result.extra['startup_s']} s; playing at {cfg.rate:g}x")

        # 2. play
        source = Prefetch(iter_frames(bag, topic, restamp=cfg.restamp, decode_pixels=False, keep_raw=True), depth=8)
        frames: list[Frame] = result.frames
        try:
            for d in source:
                f = d.frame
                if clock_state["bag0"] is None:
                    clock_state["bag0"], clock_state["wall0"] = f.stamp_ns, time.monotonic()
                target = clock_state["wall0"] + (f.stamp_ns - clock_state["bag0"]) / 1e9 / cfg.rate
                delay = target - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                if node_proc is not None and not node_proc.alive():
                    raise LiveModeError(f"The monitor node exited (code {node_proc.proc.returncode}) during playback "
                                        f"after {len(frames)} frames. Its log ({node_proc.log_path}):\n"
                                        f"{_tail(node_proc.log_path)}", bag=str(bag.path))
                if node_left_graph():
                    raise left_graph_error(f"during playback after {len(frames)} frames")
                publish_clock(f.stamp_ns)
                t_pub = time.monotonic_ns()
                image_pub.publish(d.raw)
                published.setdefault(f.header_stamp_ns, deque()).append((f.index, t_pub))
                frames.append(f)
        except CorruptBagError as err:
            result.complete, result.error = False, str(err)
            result.extra["error_type"] = type(err).__name__
        t_last_pub = time.monotonic()
        result.extra["playback_s"] = round(t_last_pub - (clock_state["wall0"] or t_last_pub), 3)

        # 3. drain
        while True:
            time.sleep(0.05)
            with lock:
                got = frame_verdicts[0] - n_before
                last = last_verdict_ns[0]
            now = time.monotonic()
            idle = now - max(t_last_pub, last / 1e9)
            if got >= len(frames) or idle > cfg.idle_timeout_s or now - t_last_pub > cfg.drain_timeout_s:
                break
            if node_proc is not None and not node_proc.alive():
                break  # the exit code decides below
            if node_left_graph():
                result.complete = False
                result.error = str(left_graph_error(f"while its last verdicts were awaited ({got} of "
                                                    f"{len(frames)} in)"))
                result.extra["error_type"] = LiveModeError.__name__
                break
        time.sleep(0.2)
        result.wall_s = time.monotonic() - t0
    finally:
        if source is not None:
            source.close()
        with lock:
            recorded, flag_seq, health_last = list(verdicts), list(flags), dict(health)
        executor.shutdown(timeout_sec=2.0)
        player.destroy_node()
        rclpy.try_shutdown(context=context)
        spinner.join(timeout=5.0)
        if node_proc is not None:
            code = node_proc.stop()
            result.extra["node_exit_code"] = code
            if code not in (0, None) and result.complete:
                # it died while the last verdicts were awaited (a death during playback raised above)
                result.complete = False
                result.error = (f"the monitor node exited with code {code} after playback; its last frames may "
                                f"have no verdict. Its log ({node_proc.log_path}):\n{_tail(node_proc.log_path)}")
                result.extra["error_type"] = LiveModeError.__name__

    # 4. match verdicts to frames by header stamp
    by_index: dict[int, Verdict] = {}
    stale = unmatched = 0
    for recv_ns, v in recorded:
        if is_watchdog_reason(v["reason"]):
            stale += 1
            continue
        queue_ = published.get(v["header_stamp_ns"])
        if not queue_:
            unmatched += 1
            continue
        index, t_pub = queue_.popleft()
        f = result.frames[index]
        by_index[index] = Verdict(frame_index=index, stamp_ns=f.stamp_ns, header_stamp_ns=f.header_stamp_ns,
                                  score=v["score"], raw_is_ood=v["raw_is_ood"], flag=v["flag"], valid=v["valid"],
                                  reason=v["reason"], latency_ms=(recv_ns - t_pub) / 1e6,
                                  node_latency_ms=v["node_latency_ms"], source="live")
    result.verdicts = [by_index[i] for i in sorted(by_index)]
    n_pub = len(result.frames)
    all_flags = [v["flag"] for _, v in recorded]
    result.extra.update({
        "published": n_pub, "verdicts_received": len(recorded), "matched": len(result.verdicts),
        "dropped": n_pub - len(result.verdicts), "stale_verdicts": stale, "unmatched_verdicts": unmatched,
        "ood_messages": len(flag_seq), "ood_topic_consistent": flag_seq == all_flags,
        "duplicate_header_stamps": n_pub - len(published),
        "node_health": health_last,
        "threshold": next((v["threshold"] for _, v in recorded if math.isfinite(v["threshold"])), math.nan),
    })
    if not recorded:
        hint = f" Node log ({node_proc.log_path}):\n{_tail(node_proc.log_path)}" if node_proc else ""
        raise LiveModeError(f"The node {fqn} published no verdict for the {n_pub} frame(s) played from {topic}.{hint}",
                            bag=str(bag.path))
    return result
