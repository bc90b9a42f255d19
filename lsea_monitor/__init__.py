"""LSEA Monitor: runtime OoD detection from the latent-space entropy of MC-dropout samples.

The ROS-free core lives in this package (sampling, entropy, detectors, metrics, artefacts,
the per-frame pipeline). The ROS 2 node is :mod:`lsea_monitor.node`, the rosbag replay is
:mod:`lsea_monitor.replay`; neither is imported from here, so the core never needs rclpy.
"""

__version__ = "0.1.0"
