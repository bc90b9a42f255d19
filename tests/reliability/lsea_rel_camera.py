"""A camera stand-in for the reliability tests, run as its own process.

    python lsea_rel_camera.py CONFIG.json

CONFIG: {"topic": t, "images": [png paths], "rate_hz": r, "duration_s": d (0 = until signalled),
"sent_log": path, "prefix": p, "reliable": bool}. Waits for a subscriber, then publishes the images
in turn as rgb8 ``sensor_msgs/Image`` with unique stamps (now) and frame_id "<prefix>:<seq>", and
appends {"seq", "sec", "nanosec", "t_wall_s"} per frame to the sent log as a JSON line (flushed, so
the log survives a SIGKILL). SIGINT/SIGTERM end it cleanly with exit code 0.
"""

from __future__ import annotations

import json
import signal
import sys
import time

import cv2
import numpy as np
import rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import Image

_stop = False


def _on_signal(signum: int, frame: object) -> None:
    global _stop
    _stop = True


def main(cfg_path: str) -> int:
    cfg = json.loads(open(cfg_path).read())
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node("lsea_rel_camera")
    qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE) if cfg.get("reliable") else qos_profile_sensor_data
    pub = node.create_publisher(Image, cfg["topic"], qos)
    frames = []
    for path in cfg["images"]:
        rgb = cv2.cvtColor(cv2.imread(path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        h, w = rgb.shape[:2]
        frames.append(Image(height=h, width=w, encoding="rgb8", step=w * 3, data=np.ascontiguousarray(rgb).tobytes()))
    log = open(cfg["sent_log"], "a", buffering=1)
    try:
        deadline = time.monotonic() + 180.0
        while pub.get_subscription_count() == 0 and not _stop:
            if time.monotonic() > deadline:
                print("no subscriber on", cfg["topic"], file=sys.stderr)
                return 3
            time.sleep(0.05)
        time.sleep(0.5)  # let the subscriber side finish matching too
        period_s = 1.0 / float(cfg["rate_hz"])
        end = time.monotonic() + float(cfg.get("duration_s") or 0.0) if cfg.get("duration_s") else float("inf")
        next_t, last_ns, seq = time.monotonic(), 0, 0
        while not _stop and time.monotonic() < end:
            msg = frames[seq % len(frames)]
            now_ns = max(node.get_clock().now().nanoseconds, last_ns + 1)  # unique stamps
            last_ns = now_ns
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(now_ns, 1_000_000_000)
            msg.header.frame_id = f"{cfg.get('prefix', 'cam')}:{seq}"
            t_wall_s = time.time()
            pub.publish(msg)
            log.write(json.dumps({"seq": seq, "sec": msg.header.stamp.sec, "nanosec": msg.header.stamp.nanosec,
                                  "t_wall_s": t_wall_s}) + "\n")
            seq += 1
            next_t += period_s
            delay = next_t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -1.0:  # fell far behind (machine busy): do not burst to catch up
                next_t = time.monotonic()
        time.sleep(0.3)
    finally:
        log.close()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
