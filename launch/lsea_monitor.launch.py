"""Start the LSEA Monitor node (``ros2 launch lsea_monitor lsea_monitor.launch.py``).

    ros2 launch lsea_monitor lsea_monitor.launch.py \
        artefact:=/opt/lsea/detector.safetensors checkpoint:=/opt/lsea/best.ckpt \
        image_topic:=/camera/front/image_raw namespace:=front

The node is a lifecycle node that configures and activates itself (parameter ``autostart``, true in
the default parameter file), so this launch does not drive transitions; it stays manageable through
the standard lifecycle services (``ros2 lifecycle set /<namespace>/lsea_monitor deactivate``). If loading the
model or the artefact fails, the process exits non-zero with the reason in its log.

``artefact`` and ``checkpoint`` are required: a monitor must say which model it vouches for. The
launch arguments override the parameter file, ``model_class`` and ``layer`` too: they default to ''
(= the values recorded in the artefact), so a parameter file's own ``model_class`` or ``layer`` is
replaced by '' unless given again as a launch argument. launch/lsea_monitor.launch.xml is the same
launch in XML.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare


def generate_launch_description() -> LaunchDescription:
    default_params = PathJoinSubstitution([FindPackageShare("lsea_monitor"), "config", "lsea_monitor.params.yaml"])
    args = [
        DeclareLaunchArgument("artefact", description="Detector artefact (.safetensors) written by lsea-calibrate."),
        DeclareLaunchArgument("checkpoint", description="Model checkpoint the artefact was calibrated with."),
        DeclareLaunchArgument("image_topic", default_value="/camera/image_raw",
                              description="Camera topic (sensor_msgs/Image, or CompressedImage with "
                                          "input_type: compressed in the parameter file); remaps 'image'."),
        DeclareLaunchArgument("params_file", default_value=default_params,
                              description="Node parameter YAML (keys under /**/lsea_monitor: ros__parameters)."),
        DeclareLaunchArgument("namespace", default_value="",
                              description="Namespace of the node; outputs are <namespace>/lsea_monitor/verdict, /ood."),
        DeclareLaunchArgument("model_class", default_value="",
                              description="Model class 'package.module:Class'; '' = the artefact's."),
        DeclareLaunchArgument("layer", default_value="", description="Hooked layer; '' = the artefact's."),
    ]
    overrides = {name: ParameterValue(LaunchConfiguration(name), value_type=str)
                 for name in ("artefact", "checkpoint", "model_class", "layer")}
    node = LifecycleNode(
        package="lsea_monitor",
        executable="lsea_monitor_node",
        name="lsea_monitor",
        namespace=LaunchConfiguration("namespace"),
        parameters=[LaunchConfiguration("params_file"), overrides],
        remappings=[("image", LaunchConfiguration("image_topic"))],
        output="screen",
        emulate_tty=True,
    )
    return LaunchDescription([*args, node])
