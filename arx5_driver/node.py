"""ROS 2 node ``arx5_driver``: the ARX5 arm (real SDK or PyBullet) behind standard messages.

Publishes ``joint_states`` (``sensor_msgs/JointState``: joint1..joint6 in rad and the gripper width in
m as joint ``gripper``) and ``ee_pose`` (``geometry_msgs/PoseStamped`` of the SDK's end-effector link in
its base frame) at ``joint_state_rate_hz``; ``~/status`` (``std_msgs/String``, mode and reason) at 10 Hz.
Subscribes to ``action_chunk`` (``dynaguide_msgs/ActionChunk``; ``ee_delta`` or ``joint_position``).
Services ``~/estop``, ``~/reset_estop`` and ``~/deactivate`` (``std_srvs/Trigger``; deactivate damps
without latching).  The arm is damped on shutdown.

Parameters: the fields of :class:`arx5_driver.config.DriverConfig`, nested sections as dotted names
(``safety.table_z_m``, ``executor.max_chunk_age_s``…); see ``config/arx5.yaml``.  ``model`` is
required.  Run: ``python -m arx5_driver.node --ros-args --params-file config/arx5.yaml``.

All ROS imports live in this module so the rest of the package works without ROS.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
import typing
from typing import Any

import numpy as np
import rclpy
from geometry_msgs.msg import PoseStamped
from rclpy.exceptions import ParameterUninitializedException
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import JointState
from std_msgs.msg import String
from std_srvs.srv import Trigger

from dynaguide.config import from_dict
from dynaguide_msgs.msg import ActionChunk as ActionChunkMsg

from arx5_driver.backends import ArmBackend, SdkBackend, SimBackend
from arx5_driver.chunk_executor import ChunkRejected, ExecutorChunk
from arx5_driver.config import DriverConfig
from arx5_driver.controller import ArmController
from arx5_driver.kinematics import Kinematics
from arx5_driver.transforms import matrix_to_quaternion

NODE_NAME = "arx5_driver"


def _flat_defaults(cls: type, prefix: str = "") -> dict[str, tuple[Any, Any]]:
    """``{dotted name: (type hint, default)}`` for every leaf field of dataclass ``cls``."""
    hints = typing.get_type_hints(cls)
    out: dict[str, tuple[Any, Any]] = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(hint):
            out.update(_flat_defaults(hint, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = (hint, default)
    return out


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def make_backend(config: DriverConfig) -> ArmBackend:
    if config.backend == "sdk":
        return SdkBackend(config.model, config.can_interface)
    return SimBackend(config.model, initial_joint_pos=np.asarray(config.sim_initial_joint_pos, dtype=float))


class Arx5DriverNode(Node):
    """See the module docstring."""

    def __init__(self, backend: ArmBackend | None = None):
        self._running = False
        self._loop: threading.Thread | None = None
        self.controller: ArmController | None = None
        super().__init__(NODE_NAME)
        self.config = self._read_config()
        self.backend = backend or make_backend(self.config)
        self.controller = ArmController(self.backend, self.config.safety, self.config.executor)
        self._pose_kinematics = Kinematics(self.backend.robot_config)  # FK for publishing, own solver instance
        rc = self.backend.robot_config
        self.frame_id = self.config.frame_id or str(rc.base_link_name)
        self.joint_names = [f"joint{i + 1}" for i in range(self.backend.dof)] + [self.config.gripper_joint_name]
        self._latest: tuple[float, Any] = (self._now(), self.controller.latest_state)

        self.joint_pub = self.create_publisher(JointState, "joint_states", 10)
        self.pose_pub = self.create_publisher(PoseStamped, "ee_pose", 10)
        self.status_pub = self.create_publisher(String, "~/status", 10)
        self.create_subscription(ActionChunkMsg, "action_chunk", self._on_chunk, 10)
        self.create_service(Trigger, "~/estop", self._on_estop)
        self.create_service(Trigger, "~/reset_estop", self._on_reset_estop)
        self.create_service(Trigger, "~/deactivate", self._on_deactivate)
        self.create_timer(1.0 / self.config.joint_state_rate_hz, self._publish_state)
        self.create_timer(0.1, self._publish_status)

        self._running = True
        self.overruns = 0
        self._loop = threading.Thread(target=self._control_loop, name="arx5_control", daemon=True)
        self._loop.start()
        self.get_logger().info(
            f"ARX5 {self.config.model} on backend {self.config.backend!r}"
            f"{' (' + self.config.can_interface + ')' if self.config.backend == 'sdk' else ''}, "
            f"control {1.0 / self.backend.control_dt:.0f} Hz, joint_states {self.config.joint_state_rate_hz:.0f} Hz; "
            "arm damped until the first chunk passes the start check")

    # ------------------------------------------------------------------ parameters
    def _read_config(self) -> DriverConfig:
        from dynaguide_ros.params import check_parameters

        check_parameters(self.get_name(), DriverConfig, self._parameter_overrides.keys())  # no silent typos
        values: dict[str, Any] = {}
        for name, (hint, default) in _flat_defaults(DriverConfig).items():
            if name == "model":
                self.declare_parameter(name, Parameter.Type.STRING)
            elif typing.get_origin(hint) is list:
                self.declare_parameter(name, [float(v) for v in default])
            else:
                self.declare_parameter(name, default)
            try:
                value = self.get_parameter(name).value
            except ParameterUninitializedException:
                value = None
            if value is not None:
                values[name] = list(value) if typing.get_origin(hint) is list else value
        if not values.get("model"):
            raise ValueError("parameter 'model' is required (X5 or L5); there is no default")
        for name, (hint, _) in _flat_defaults(DriverConfig).items():
            if hint is float and isinstance(values.get(name), int):
                values[name] = float(values[name])
        return from_dict(DriverConfig, _nest(values))

    # ------------------------------------------------------------------ loops
    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _control_loop(self) -> None:
        """Tick the controller every ``control_dt``, on a fixed schedule.

        Each tick's time is the ROS time at which it was *scheduled* (not when the thread woke up), so
        consecutive ticks are exactly ``control_dt`` apart even when the thread is late and catches up;
        more than 10 periods late, the missed ticks are skipped (counted in ``overruns``).
        """
        dt = self.backend.control_dt
        scheduled = time.monotonic()
        while self._running:
            lateness = time.monotonic() - scheduled
            if lateness < 0:
                time.sleep(-lateness)
                lateness = 0.0
            elif lateness > 10 * dt:
                self.overruns += 1
                scheduled = time.monotonic()
                lateness = 0.0
            now = self._now() - lateness
            try:
                self.controller.tick(now)
            except Exception as exc:  # fail safe: any error in the loop damps the arm and stops it
                self.get_logger().error(f"control loop error, damping: {exc!r}")
                self.controller.estop()
                return
            self._latest = (now, self.controller.latest_state)
            scheduled += dt

    def _publish_state(self) -> None:
        stamp_s, state = self._latest
        stamp = rclpy.time.Time(nanoseconds=int(stamp_s * 1e9)).to_msg()
        js = JointState()
        js.header.stamp = stamp
        js.name = self.joint_names
        js.position = [float(v) for v in state.joint_pos] + [float(state.gripper_width)]
        js.velocity = [float(v) for v in state.joint_vel] + [0.0]
        self.joint_pub.publish(js)
        position, rotation = self._pose_kinematics.fk(state.joint_pos)
        pose = PoseStamped()
        pose.header.stamp = stamp
        pose.header.frame_id = self.frame_id
        pose.pose.position.x, pose.pose.position.y, pose.pose.position.z = (float(v) for v in position)
        q = matrix_to_quaternion(rotation)
        pose.pose.orientation.x, pose.pose.orientation.y, pose.pose.orientation.z, pose.pose.orientation.w = (
            float(v) for v in q)
        self.pose_pub.publish(pose)

    def _publish_status(self) -> None:
        cmd = self.controller.last_command
        self.status_pub.publish(String(data=f"{self.controller.mode.value}: {cmd.reason}"))

    # ------------------------------------------------------------------ callbacks
    def _on_chunk(self, msg: Any) -> None:
        now = self._now()
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        try:
            chunk = ExecutorChunk.from_flat(stamp, msg.action_space, int(msg.horizon), int(msg.action_dim),
                                          np.asarray(msg.actions, dtype=float), int(msg.start_index), float(msg.dt),
                                          msg.header.frame_id, int(msg.frozen_steps))
        except ChunkRejected as exc:
            self.get_logger().warning(f"chunk {msg.sequence} rejected: {exc}", throttle_duration_sec=1.0)
            return
        result = self.controller.submit_chunk(chunk, now)
        if not result.accepted:
            self.get_logger().warning(f"chunk {msg.sequence} rejected: {result.reason}", throttle_duration_sec=1.0)

    def _on_estop(self, request: Any, response: Any) -> Any:
        self.controller.estop()
        self.get_logger().error("E-STOP: arm damped; latched until ~/reset_estop")
        response.success, response.message = True, "e-stop latched, arm damped"
        return response

    def _on_reset_estop(self, request: Any, response: Any) -> Any:
        was = self.controller.reset_estop()
        response.success = was
        response.message = ("e-stop reset; arm stays damped until a chunk passes the start check" if was
                            else "e-stop was not latched")
        self.get_logger().info(response.message)
        return response

    def _on_deactivate(self, request: Any, response: Any) -> Any:
        self.controller.deactivate("deactivated by ~/deactivate")
        response.success, response.message = True, "arm damped; the next chunk must pass the start check"
        self.get_logger().info(response.message)
        return response

    # ------------------------------------------------------------------ shutdown
    def shutdown(self) -> None:
        """Stop the control loop and damp the arm (idempotent)."""
        self._running = False
        if self._loop is not None and self._loop.is_alive():
            self._loop.join(timeout=1.0)
        if self.controller is not None and not self.controller.closed:
            self.controller.shutdown()
            self.get_logger().info("arm damped (shutdown)")

    def destroy_node(self) -> None:
        self.shutdown()
        super().destroy_node()


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``python -m arx5_driver.node --ros-args --params-file config/arx5.yaml``.

    ``argv`` (without the program name) may carry ``--ros-args …``; localhost DDS defaults are applied
    by :func:`dynaguide_ros.node_main.spin_node`, and the arm is damped in :meth:`Arx5DriverNode.destroy_node`.
    """
    from dynaguide_ros.node_main import spin_node

    return spin_node(Arx5DriverNode, argv)


if __name__ == "__main__":
    sys.exit(main())
