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
    "calvin_bridge": "dynaguide_ros.calvin_bridge_node:main",
    "arx5_driver": "arx5_driver.node:main",
}


#: executable name -> "module:Class" of its typed parameters (the launcher checks ``--set`` and YAML keys
#: against them before starting anything; each node checks them again, for ``ros2 launch``)
NODE_CONFIGS: dict[str, str] = {
    "camera_node": "dynaguide_ros.camera_node:CameraNodeConfig",
    "embedding_node": "dynaguide_ros.embedding_node:EmbeddingNodeConfig",
    "policy_node": "dynaguide_ros.policy_node:PolicyNodeConfig",
    "guidance_manager": "dynaguide_ros.guidance_manager_node:GuidanceManagerConfig",
    "calvin_bridge": "dynaguide_ros.calvin_bridge_node:CalvinBridgeConfig",
    "arx5_driver": "arx5_driver.config:DriverConfig",
}


def config_class(executable: str) -> type:
    import importlib

    module, cls = NODE_CONFIGS[executable].split(":")
    return getattr(importlib.import_module(module), cls)


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


#: what ``--untrained`` sets: no model directory, no checkpoints (randomly initialised CPU models)
UNTRAINED_OVERRIDES: dict[str, dict[str, str]] = {
    "policy_node": {"models": "", "runner.policy_checkpoint": "", "runner.dynamics_checkpoint": ""}}


def is_untrained(policy_params: dict) -> bool:
    """True when the policy node's parameters name no models (it then runs randomly initialised ones)."""
    return not (policy_params.get("models") or (policy_params.get("runner.policy_checkpoint")
                                                and policy_params.get("runner.dynamics_checkpoint")))


def real_arm_refusal(params: dict[str, dict]) -> str | None:
    """Why a graph must not start on the real arm, or None.  ``params``: ``{node: {param: value}}`` as merged
    from the parameter files and overrides.  The real backend (``arx5_driver.backend: sdk``) needs trained
    models and a pretrained embedder; the sim backend may run anything (dry runs, plumbing)."""
    if params.get("arx5_driver", {}).get("backend", "sim") != "sdk":
        return None
    if "policy_node" in params and is_untrained(params["policy_node"]):
        return ("refusing to drive the real arm (arx5_driver.backend: sdk) with an UNTRAINED policy: set "
                "policy_node.models (a directory with policy/ and dynamics/) or policy_node.runner.policy_checkpoint "
                "and policy_node.runner.dynamics_checkpoint")
    if params.get("embedding_node", {}).get("embedder.kind") == "random":
        return ("refusing to drive the real arm (arx5_driver.backend: sdk) with the random embedder: set "
                "embedding_node.embedder.kind to efficientnet_lite0 (or dinov2 with embedder.model)")
    return None
