"""Rosbag replay evaluation of the monitor: ``lsea-replay-eval``.

Layers, bottom to top (as in ``rosbags``):

- :mod:`.records`: plain typed records (frames, verdicts, intervals);
- :mod:`.errors`: the :class:`~.errors.ReplayError` family, each with an exit code;
- :mod:`.bag_io`: I/O only (open sqlite3 or mcap bags, yield raw ``(topic, stamp_ns, bytes)``,
  write an output bag with the verdicts added);
- :mod:`.decode`: CDR -> messages -> RGB arrays (through :mod:`lsea_monitor.ros_image`, the node's own
  conversion);
- :mod:`.ground_truth`: OoD intervals from a ``std_msgs/Bool`` topic or a YAML/CSV sidecar;
- :mod:`.evaluate`: pure functions (detection quality, delays, false alarms, latency);
- :mod:`.offline` and :mod:`.live`: the two ways to obtain verdicts;
- :mod:`.report`, :mod:`.cli`, :mod:`.demo_bag`.

Nothing here is imported by the core; reading bags needs ``rosbags`` only, live mode needs rclpy.
"""
