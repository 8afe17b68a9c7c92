"""Build a ROS 2 ``LaunchDescription`` for a graph of :data:`dynaguide_ros.graphs.GRAPHS`.

Used by ``launch/*.launch.py`` on full ROS 2 installs (``launch``/``launch_ros`` are not on PyPI, so
they are imported only here, when a launch file is loaded).
"""

from __future__ import annotations

from dynaguide_ros.graphs import GRAPHS, NODE_ENTRY_POINTS
from dynaguide_ros.paths import config_path
from dynaguide_ros.ros_env import localhost_env


def generate_graph_launch_description(graph: str):
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
    from launch.substitutions import LaunchConfiguration
    from launch_ros.actions import Node

    spec = GRAPHS[graph]
    files = [config_path(name) for name in spec.params_files]
    # the pip launcher's checks on the shipped files: unknown keys, and the real-arm rule (each node checks its own
    # parameters again when it starts, whatever params_file:= names)
    from dynaguide.config import ConfigError
    from dynaguide_ros.graphs import real_arm_refusal
    from dynaguide_ros.launcher import check_graph_params, read_params

    params = read_params(files)
    check_graph_params(spec, params, ", ".join(map(str, files)))
    refusal = real_arm_refusal(params)
    if refusal:
        raise ConfigError(refusal)
    actions = [DeclareLaunchArgument("params_file", default_value=str(files[0]),
                                     description="ROS 2 parameters file replacing config/" + spec.params_files[0])]
    params = [LaunchConfiguration("params_file"), *map(str, files[1:])]
    # Localhost-only discovery unless DYNAGUIDE_ROBOT_NETWORK=1 (see dynaguide_ros/ros_env.py).
    env = localhost_env()
    for key in ("ROS_AUTOMATIC_DISCOVERY_RANGE", "FASTDDS_DEFAULT_PROFILES_FILE", "RMW_IMPLEMENTATION"):
        if key in env:
            actions.append(SetEnvironmentVariable(key, env[key]))
    for node in spec.nodes:
        if node.executable not in NODE_ENTRY_POINTS:
            raise ValueError(f"graph {graph!r}: unknown executable {node.executable!r}")
        actions.append(Node(package="dynaguide_ros", executable=node.executable, name=node.name,
                            parameters=params, remappings=list(node.remappings), output="screen"))
    return LaunchDescription(actions)
