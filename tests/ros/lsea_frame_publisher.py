"""A camera stand-in for the node tests, run as its own process.

    python lsea_frame_publisher.py PLAN.json SENT.json

PLAN: {"npz": frames file, "frames": [[array name, index], ...], "rate_hz": r, "topic": t,
"encoding": "rgb8"|"bgr8"}. Waits for a subscriber on the topic, publishes the frames at the rate
with header.stamp = now (each stamp unique) and frame_id = "<array>:<index>", and writes
[{frame_id, sec, nanosec, t_wall_s}] to SENT.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import rclpy
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image


def main(plan_path: str, sent_path: str) -> int:
    plan = json.loads(open(plan_path).read())
    frames = np.load(plan["npz"])
    rclpy.init()
    node = rclpy.create_node("lsea_test_camera")
    pub = node.create_publisher(Image, plan["topic"], qos_profile_sensor_data)
    sent = []
    try:
        deadline = time.monotonic() + 180.0
        while pub.get_subscription_count() == 0:
            if time.monotonic() > deadline:
                print("no subscriber on", plan["topic"], file=sys.stderr)
                return 3
            time.sleep(0.1)
        time.sleep(1.0)  # let the subscriber side finish matching too
        period_s = 1.0 / float(plan["rate_hz"])
        encoding = plan.get("encoding", "rgb8")
        next_t = time.monotonic()
        last_ns = 0
        for name, index in plan["frames"]:
            rgb = frames[name][index]
            h, w = rgb.shape[:2]
            data = rgb if encoding == "rgb8" else rgb[:, :, ::-1]
            msg = Image(height=h, width=w, encoding=encoding, step=w * 3,
                        data=np.ascontiguousarray(data).tobytes())
            now = node.get_clock().now()
            now_ns = max(now.nanoseconds, last_ns + 1)  # unique stamps
            last_ns = now_ns
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(now_ns, 1_000_000_000)
            msg.header.frame_id = f"{name}:{index}"
            t_wall_s = time.time()
            pub.publish(msg)
            sent.append({"frame_id": msg.header.frame_id, "sec": msg.header.stamp.sec,
                         "nanosec": msg.header.stamp.nanosec, "t_wall_s": t_wall_s})
            next_t += period_s
            time.sleep(max(0.0, next_t - time.monotonic()))
        time.sleep(0.5)
    finally:
        with open(sent_path, "w") as f:
            json.dump(sent, f)
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
