"""Launch files, parameter YAMLs and the ament package, checked without ROS 2 launch (not on PyPI):
both launch files agree, every YAML key is a declared parameter of the right type and range, and
the launch_testing test runs where launch_testing exists (skipped here, visibly)."""

from __future__ import annotations

import ast
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import yaml

from lsea_monitor import node_params

REPO = Path(__file__).resolve().parents[2]
LAUNCH_PY = REPO / "launch" / "lsea_monitor.launch.py"
LAUNCH_XML = REPO / "launch" / "lsea_monitor.launch.xml"
ARGS = {"artefact", "checkpoint", "image_topic", "params_file", "namespace", "model_class", "layer"}
REQUIRED = {"artefact", "checkpoint"}
PACKAGE = REPO / "ros2_ws" / "src" / "lsea_monitor"

pytestmark = pytest.mark.ros


def py_launch_args() -> dict[str, bool]:
    """DeclareLaunchArgument names in the Python launch file -> has a default."""
    tree = ast.parse(LAUNCH_PY.read_text())
    out = {}
    for call in ast.walk(tree):
        if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "DeclareLaunchArgument":
            out[call.args[0].value] = any(k.arg == "default_value" for k in call.keywords)
    return out


def test_python_and_xml_launch_files_declare_the_same_arguments() -> None:
    compile(LAUNCH_PY.read_text(), str(LAUNCH_PY), "exec")
    py_args = py_launch_args()
    root = ET.parse(LAUNCH_XML).getroot()
    xml_args = {a.get("name"): a.get("default") is not None for a in root.findall("arg")}
    assert set(py_args) == set(xml_args) == ARGS
    assert {n for n, has_default in py_args.items() if not has_default} == REQUIRED
    assert py_args == xml_args
    assert all(a.get("description") for a in root.findall("arg"))


def test_xml_launch_starts_the_lifecycle_node_with_the_parameter_file_and_remap() -> None:
    root = ET.parse(LAUNCH_XML).getroot()
    (node,) = root.findall("lifecycle_node")
    assert (node.get("pkg"), node.get("exec"), node.get("name")) == (
        "lsea_monitor", "lsea_monitor_node", "lsea_monitor")
    assert node.get("namespace") == "$(var namespace)"
    params = node.findall("param")
    assert params[0].get("from") == "$(var params_file)"
    named = {p.get("name"): p.get("value") for p in params[1:]}
    assert named == {n: f"$(var {n})" for n in ("artefact", "checkpoint", "model_class", "layer")}
    (remap,) = node.findall("remap")
    assert (remap.get("from"), remap.get("to")) == ("image", "$(var image_topic)")
    text = LAUNCH_PY.read_text()
    for needle in ('executable="lsea_monitor_node"', 'name="lsea_monitor"', 'value_type=str',
                   '("image", LaunchConfiguration("image_topic"))', '"config", "lsea_monitor.params.yaml"'):
        assert needle in text


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def yaml_params(path: Path) -> dict[str, Any]:
    doc = yaml.safe_load(path.read_text())
    assert list(doc) == ["/**/lsea_monitor"], f"{path.name}: one node key matching any namespace"
    return flatten(doc["/**/lsea_monitor"]["ros__parameters"])


@pytest.mark.parametrize("name", ["lsea_monitor.params.yaml", "demo.params.yaml"])
def test_parameter_files_hold_declared_parameters_of_the_declared_type_and_range(name: str) -> None:
    params = yaml_params(REPO / "config" / name)
    for key, value in params.items():
        assert key in node_params.BY_NAME, f"{name}: {key} is not a parameter of the node (typo?)"
        spec = node_params.BY_NAME[key]
        # rclpy refuses 1 for a double: the YAML must say 1.0
        assert type(value) is type(spec.default), f"{name}: {key}={value!r} is not a {type(spec.default).__name__}"
        if spec.low is not None:
            assert spec.low <= value <= spec.high, f"{name}: {key}={value} outside [{spec.low}, {spec.high}]"
    assert node_params.problems(node_params.MonitorParams().replace(params)) == []


def test_vehicle_parameter_file_lists_every_parameter_with_the_code_defaults() -> None:
    params = yaml_params(REPO / "config" / "lsea_monitor.params.yaml")
    assert params == {s.name: s.default for s in node_params.SPECS}


def test_ament_package_metadata() -> None:
    root = ET.parse(PACKAGE / "package.xml").getroot()
    assert root.get("format") == "3" and root.findtext("name") == "lsea_monitor"
    deps = {e.text for e in root.findall("exec_depend")}
    assert {"rclpy", "sensor_msgs", "std_msgs", "diagnostic_msgs", "lifecycle_msgs", "cv_bridge"} <= deps
    assert root.find("export/build_type").text == "ament_python"
    assert (PACKAGE / "resource" / "lsea_monitor").is_file()
    for link in ("launch", "config"):
        assert (PACKAGE / link).resolve() == REPO / link
    cfg = (PACKAGE / "setup.cfg").read_text()
    assert "script_dir=$base/lib/lsea_monitor" in cfg and "install_scripts=$base/lib/lsea_monitor" in cfg
    assert "lsea_monitor_node = lsea_monitor.node:main" in (PACKAGE / "setup.py").read_text()


def test_launch_testing_suite(ros_env: dict[str, str]) -> None:
    """Runs tests/ros/launch_test_lsea_monitor.py where ROS 2 launch_testing is installed."""
    pytest.importorskip("launch_testing", reason="launch_testing is not installed (no ROS 2 launch packages on "
                        "PyPI); the launch test runs on a ROS 2 install with ros2_ws sourced")
    pytest.importorskip("launch_ros", reason="launch_ros is not installed")
    out = subprocess.run([sys.executable, "-m", "launch_testing.launch_test",
                          str(Path(__file__).with_name("launch_test_lsea_monitor.py"))],
                         env=ros_env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
