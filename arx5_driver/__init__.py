"""ARX5 arm driver: SDK and PyBullet backends, safety layer, action-chunk executor, ROS 2 node.

Everything except :mod:`arx5_driver.node` imports without ROS.
"""

from arx5_driver.backends import ArmBackend, ArmState, SdkBackend, SimBackend, load_sdk_configs
from arx5_driver.chunk_executor import ChunkExecutor, ChunkRejected, ExecutorChunk
from arx5_driver.config import DriverConfig, ExecutorConfig, SafetyConfig
from arx5_driver.controller import ArmController, ChunkVerdict
from arx5_driver.safety import Action, Mode, SafeCommand, SafetyLayer

__all__ = [
    "Action", "ArmBackend", "ArmController", "ArmState", "ChunkExecutor", "ChunkRejected", "ChunkVerdict",
    "DriverConfig", "ExecutorChunk", "ExecutorConfig", "Mode", "SafeCommand", "SafetyConfig", "SafetyLayer",
    "SdkBackend", "SimBackend", "load_sdk_configs",
]
