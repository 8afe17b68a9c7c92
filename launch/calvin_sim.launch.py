"""ROS 2 launch file for the 'calvin_sim' graph (full ROS 2 installs: `ros2 launch dynaguide_ros calvin_sim.launch.py`).

The node list comes from `dynaguide_ros.graphs.GRAPHS["calvin_sim"]` and the parameters from
`config/calvin_sim.yaml`: the same description the pip launcher
(`dynaguide launch calvin_sim`) uses.  Override the parameters file with `params_file:=/path/to.yaml`.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from dynaguide_ros.graphs import GRAPHS, NODE_ENTRY_POINTS
from dynaguide_ros.paths import config_path
from dynaguide_ros.ros_env import localhost_env

GRAPH = "calvin_sim"


def generate_launch_description() -> LaunchDescription:
    spec = GRAPHS[GRAPH]
    files = [config_path(name) for name in spec.params_files]
    actions = [DeclareLaunchArgument("params_file", default_value=str(files[0]),
                                     description="ROS 2 parameters file replacing config/" + spec.params_files[0])]
    params = [LaunchConfiguration("params_file"), *map(str, files[1:])]
    # Localhost-only discovery unless DYNAGUIDE_ROBOT_NETWORK=1 (see dynaguide_ros/ros_env.py).
    env = localhost_env()
    for key in ("ROS_AUTOMATIC_DISCOVERY_RANGE", "FASTDDS_DEFAULT_PROFILES_FILE", "RMW_IMPLEMENTATION"):
        if key in env:
            actions.append(SetEnvironmentVariable(key, env[key]))
    for node in spec.nodes:
        assert node.executable in NODE_ENTRY_POINTS, node.executable
        actions.append(Node(package="dynaguide_ros", executable=node.executable, name=node.name,
                            parameters=params, remappings=list(node.remappings), output="screen"))
    return LaunchDescription(actions)
