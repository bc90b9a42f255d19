"""Start-up failures (artefact mismatch, bad parameters) and the lifecycle and parameter services of
the node as a process."""

from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from lsea_ros_testutil import (
    NODE_STARTUP_TIMEOUT_S,
    NodeProcess,
    Probe,
    StreamFrames,
    health_values,
    image_msg,
    node_command,
    stamp_key,
)

pytestmark = [pytest.mark.ros, pytest.mark.slow]


def test_mismatched_or_missing_files_and_bad_parameters_exit_non_zero_with_a_clear_message(
    start_process: Callable[..., NodeProcess], monitor_files: Any, tmp_path: Path,
) -> None:
    other_ckpt = tmp_path / "other.ckpt"
    shutil.copyfile(monitor_files.checkpoint, other_ckpt)
    with open(other_ckpt, "ab") as f:
        f.write(b"\0")  # same weights, another file: its SHA-256 no longer matches the artefact's
    cases = {
        "checkpoint mismatch": ({"checkpoint": str(other_ckpt)}, 1, "was calibrated with checkpoint sha256"),
        "layer mismatch": ({"layer": "deeplab_v3plus_model.decoder"}, 1, "was calibrated on layer"),
        "mc_samples mismatch": ({"mc_samples": 3}, 1, "mc_samples=3 but the artefact was calibrated with M=8"),
        "missing artefact": ({"artefact": str(tmp_path / "nope.safetensors")}, 1, "Detector artefact not found"),
        "bad choice": ({"input_type": "video"}, 2, "input_type must be one of raw, compressed"),
        "out of range": ({"hysteresis.window": 0}, 2, "hysteresis.window"),
    }
    procs = {name: start_process(node_command(monitor_files, **params), name=name.replace(" ", "_"))
             for name, (params, _, _) in cases.items()}
    for name, (_, code, message) in cases.items():
        rc = procs[name].wait(NODE_STARTUP_TIMEOUT_S)
        log = procs[name].log()
        assert rc == code, f"{name}: exit code {rc}, expected {code}:\n{log[-3000:]}"
        assert message in log, f"{name}: {message!r} not in the log:\n{log[-3000:]}"
        assert "Traceback" not in log, f"{name}: a traceback instead of a message:\n{log[-3000:]}"


def test_lifecycle_services_and_runtime_parameters(
    start_process: Callable[..., NodeProcess], probe: Probe, monitor_files: Any, stream_frames: StreamFrames,
) -> None:
    from lifecycle_msgs.msg import State, Transition
    from lifecycle_msgs.srv import ChangeState, GetState
    from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
    from rcl_interfaces.srv import DescribeParameters, SetParameters
    from sensor_msgs.msg import Image

    node = start_process(node_command(monitor_files, namespace=probe.namespace, artefact=str(stream_frames.artefact),
                                      autostart=False,
                                      watchdog_timeout_s=600.0, **{"qos.reliability": "reliable"}))

    def state() -> int:
        return probe.call(GetState, f"/{probe.status_prefix}/get_state", GetState.Request()).current_state.id

    def transition(tid: int) -> bool:
        req = ChangeState.Request()
        req.transition.id = tid
        return probe.call(ChangeState, f"/{probe.status_prefix}/change_state", req,
                          timeout_s=NODE_STARTUP_TIMEOUT_S).success

    def set_param(name: str, value: Any) -> tuple[bool, str]:
        pv = ParameterValue()
        if isinstance(value, bool):
            pv.type, pv.bool_value = ParameterType.PARAMETER_BOOL, value
        elif isinstance(value, int):
            pv.type, pv.integer_value = ParameterType.PARAMETER_INTEGER, value
        elif isinstance(value, float):
            pv.type, pv.double_value = ParameterType.PARAMETER_DOUBLE, value
        else:
            pv.type, pv.string_value = ParameterType.PARAMETER_STRING, value
        res = probe.call(SetParameters, f"/{probe.status_prefix}/set_parameters",
                         SetParameters.Request(parameters=[Parameter(name=name, value=pv)])).results[0]
        return res.successful, res.reason

    assert state() == State.PRIMARY_STATE_UNCONFIGURED
    probe.wait_for(lambda p: (health_values(p) or {}).get("lifecycle_state") == "unconfigured", 30.0,
                   "health in the unconfigured state")
    assert probe.snapshot()[2][-1].msg.status[0].level == b"\x01"

    # descriptors: ranges and read-only flags are visible to tools
    desc = probe.call(DescribeParameters, f"/{probe.status_prefix}/describe_parameters",
                      DescribeParameters.Request(names=["hysteresis.window", "autostart", "max_rate_hz"])).descriptors
    assert desc[0].integer_range[0].from_value == 1 and desc[1].read_only
    assert desc[2].floating_point_range[0].to_value == 1000.0

    ok, reason = set_param("hysteresis.raise_after", 9)
    assert not ok and "must not exceed hysteresis.window" in reason
    assert set_param("hysteresis.window", 0)[0] is False  # out of range
    assert set_param("autostart", True)[0] is False  # read-only
    assert set_param("max_rate_hz", 20.0) == (True, "")

    assert transition(Transition.TRANSITION_CONFIGURE) and state() == State.PRIMARY_STATE_INACTIVE
    ok, reason = set_param("checkpoint", "/elsewhere.ckpt")
    assert not ok and "read at configure" in reason
    assert transition(Transition.TRANSITION_ACTIVATE) and state() == State.PRIMARY_STATE_ACTIVE
    ok, reason = set_param("qos.depth", 5)
    assert not ok and "deactivate the node first" in reason
    assert set_param("hysteresis.clear_after", 1) == (True, "")

    pub = probe.publisher(Image, probe.image_topic)
    frames = np.load(stream_frames.npz)

    def served(sec: int, timeout_s: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            pub.publish(image_msg(frames["low"][0], sec=sec, frame_id="cam"))
            time.sleep(0.5)
            if any(stamp_key(r.msg.header) == (sec, 0) for r in probe.snapshot()[0]):
                return True
        return False

    assert served(1), "no verdict while active"
    assert transition(Transition.TRANSITION_DEACTIVATE) and state() == State.PRIMARY_STATE_INACTIVE
    deadline = time.monotonic() + 10.0
    while probe.node.count_publishers(f"/{probe.status_prefix}/verdict") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert probe.node.count_publishers(f"/{probe.status_prefix}/verdict") == 0, "verdict publisher left behind"
    assert not served(2, timeout_s=3.0), "a verdict while inactive"
    probe.wait_for(lambda p: (health_values(p) or {}).get("lifecycle_state") == "inactive", 10.0, "health inactive")

    assert transition(Transition.TRANSITION_ACTIVATE)
    assert served(3), "no verdict after re-activation"
    assert transition(Transition.TRANSITION_DEACTIVATE) and transition(Transition.TRANSITION_CLEANUP)
    assert state() == State.PRIMARY_STATE_UNCONFIGURED
    assert set_param("checkpoint", str(monitor_files.checkpoint)) == (True, "")  # allowed while unconfigured
    assert transition(Transition.TRANSITION_UNCONFIGURED_SHUTDOWN) and state() == State.PRIMARY_STATE_FINALIZED
    assert node.returncode is None
    assert node.stop(signal.SIGINT) == 0, node.log()[-3000:]


def test_health_reaches_diagnostics_while_the_auto_start_loads_and_warms_up(
    start_process: Callable[..., NodeProcess], probe: Probe, monitor_files: Any,
) -> None:
    """The node spins from the start: /diagnostics hears it (WARN, not monitoring) before it is active."""
    from lsea_ros_testutil import values

    start_process(node_command(monitor_files, namespace=probe.namespace, diagnostics_period_s=0.05))
    probe.wait_for(lambda p: (health_values(p) or {}).get("lifecycle_state") == "active", NODE_STARTUP_TIMEOUT_S,
                   "health in the active state")
    _, _, health = probe.snapshot()
    states = [values(h.msg)["lifecycle_state"] for h in health]
    before = states[: states.index("active")]
    assert before, "no health before the node was active"
    assert set(before) <= {"unconfigured", "configuring", "inactive", "activating"}, before
    assert all(h.msg.status[0].level == b"\x01" for h in health[: len(before)])  # WARN: not monitoring
