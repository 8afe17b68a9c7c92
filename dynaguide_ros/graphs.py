"""The node graphs, described once.

Both the ROS 2 launch files (``launch/*.launch.py``, for full ROS installs) and the pip launcher
(``dynaguide launch NAME``) build their processes from :data:`GRAPHS`, with the parameters of each
node read from the same YAML files in ``config/``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: executable name -> "module:function" (also the console scripts of the package)
NODE_ENTRY_POINTS: dict[str, str] = {
    "camera_node": "dynaguide_ros.camera_node:main",
    "embedding_node": "dynaguide_ros.embedding_node:main",
    "policy_node": "dynaguide_ros.policy_node:main",
    "guidance_manager": "dynaguide_ros.guidance_manager_node:main",
    "calvin_bridge": "calvin_bridge.node:main",
    "arx5_driver": "arx5_driver.node:main",
}


@dataclass(frozen=True)
class NodeSpec:
    executable: str                   # key of NODE_ENTRY_POINTS
    name: str                         # ROS node name (= the section of the YAML parameters file)
    remappings: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class GraphSpec:
    params_files: tuple[str, ...]     # files in config/, layered in order (one section per node name)
    nodes: tuple[NodeSpec, ...] = field(default_factory=tuple)


GRAPHS: dict[str, GraphSpec] = {
    "calvin_sim": GraphSpec(
        params_files=("calvin_sim.yaml",),
        nodes=(
            NodeSpec("calvin_bridge", "calvin_bridge"),
            NodeSpec("embedding_node", "embedding_node", remappings=(("image", "camera/rgb_static"),)),
            NodeSpec("guidance_manager", "guidance_manager"),
            NodeSpec("policy_node", "policy_node"),
        ),
    ),
    "real_arx5": GraphSpec(
        params_files=("real_arx5.yaml", "arx5.yaml"),
        nodes=(
            NodeSpec("camera_node", "camera_node", remappings=(("image_raw", "camera/rgb"),)),
            NodeSpec("embedding_node", "embedding_node", remappings=(("image", "camera/rgb"),)),
            NodeSpec("guidance_manager", "guidance_manager"),
            NodeSpec("policy_node", "policy_node"),
            NodeSpec("arx5_driver", "arx5_driver"),
        ),
    ),
}
