"""``calvin_bridge`` node — the PyBullet play table as a ROS 2 robot.

Executes ``action_chunk`` (dynaguide_msgs/ActionChunk, action space ``calvin_rel_ee``) at the
simulation's control rate (30 Hz) with :class:`dynaguide.chunk_execution.ActionSchedule` (late actions dropped
by timestamp, hold when nothing is due), publishes ``camera/rgb_static`` and ``camera/rgb_gripper``
(sensor_msgs/Image, sensor-data QoS) at ``camera_hz``, ``joint_states``, ``calvin/state`` (CalvinState)
and ``calvin/behaviour`` events (e.g. "drawer_open detected"); serves ``calvin/reset`` (ResetScene).
With ``start_held`` the world does not step until ``calvin/start`` (std_srvs/Trigger) is called: a client
first puts its guidance in force, then starts the world, so the first executed action is already steered (the
demo).  The latest chunk received while held is the first one executed.  In lockstep every simulated step's
camera frame is published (the policy's observation history is then the same for the same seed).
``/robot_description`` (std_msgs/String, transient local) is the Panda's URDF, whose joints ``joint_states`` names.
Once a second it publishes the executor's counts on ``/diagnostics`` (status ``calvin_bridge: execution``:
``ticks``, ``executed``, ``held`` — control ticks with no action due, which in wall-clock mode means the robot
waited for the policy —, ``dropped_late``, ``stale_on_arrival``, ``rejected``).
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass

import numpy as np
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String
from std_srvs.srv import Trigger

from calvin_bridge.config import CalvinEnvConfig
from calvin_bridge.env import CalvinEnv
from calvin_bridge.experts import scene_for_behaviours
from dynaguide.chunk_execution import DEFAULT_MAX_FUTURE_S, ActionSchedule
from dynaguide.text import short_repr
from dynaguide_msgs.msg import ActionChunk, BehaviourEvent, CalvinState
from dynaguide_msgs.srv import ResetScene
from dynaguide_ros.conversions import MessageError, chunk_from_msg, rgb_to_image_msg, seconds_to_time, time_to_seconds
from dynaguide_ros.params import declare_config
from dynaguide_ros.qos import LATCHED, RELIABLE, SENSOR

SCENE_KEYS = ("door", "drawer", "button", "switch")


@dataclass
class CalvinBridgeConfig:
    calvin_data_dir: str = ""          # empty: the project's procedural table
    table: str = "calvin_table_D"
    static_size: int = 200
    gripper_size: int = 84
    camera_hz: float = 10.0
    seed: int = 0
    scene_for: str = ""                # comma-separated behaviours made possible in every reset's scene (the
                                       # target's part in its sub-range, as the CALVIN harness and the data
                                       # collection draw it, e.g. "drawer_open"); empty: a fully random scene
    frame_id: str = "world"
    lockstep: bool = False             # True: simulated time advances only while an action is due, and
                                       # /clock is published (nodes run with use_sim_time) — a slow policy
                                       # then pauses the world instead of missing its actions
    max_future_s: float = DEFAULT_MAX_FUTURE_S  # chunks stamped further ahead of the clock (sim time in
                                                # lockstep) are rejected: one would freeze the world
    start_held: bool = False           # the world waits for calvin/start (Trigger) before its first step


class CalvinBridgeNode(Node):
    def __init__(self) -> None:
        super().__init__("calvin_bridge")
        self.cfg = declare_config(self, CalvinBridgeConfig)
        env_cfg = CalvinEnvConfig(calvin_data_dir=self.cfg.calvin_data_dir or None, table=self.cfg.table,
                                  render_every_step=False)
        env_cfg.static_camera.width = env_cfg.static_camera.height = self.cfg.static_size
        env_cfg.gripper_camera.width = env_cfg.gripper_camera.height = self.cfg.gripper_size
        self.env = CalvinEnv(env_cfg)
        self.dt = 1.0 / env_cfg.control_hz
        self._lock = threading.Lock()
        self.schedule = ActionSchedule(7, self.dt, max_future_s=self.cfg.max_future_s)
        self.gripper = 1.0
        self.scene_behaviours = tuple(b.strip() for b in self.cfg.scene_for.split(",") if b.strip())
        # validated here (unknown behaviour, two of one part → ValueError): the node does not start on a bad value
        self.obs, _ = self.env.reset(seed=self.cfg.seed, options=self._scene_options(self.cfg.seed))
        self.sim_time = self.get_clock().now().nanoseconds * 1e-9  # lockstep: simulated seconds
        self.clock_pub = self.create_publisher(Clock, "/clock", 10) if self.cfg.lockstep else None
        self._rendered_at = None
        self.last_behaviour = "no_behaviour"
        self.image_pubs = {k: self.create_publisher(Image, f"camera/{k}", SENSOR)
                           for k in ("rgb_static", "rgb_gripper")}
        self.joint_pub = self.create_publisher(JointState, "joint_states", RELIABLE)
        self.state_pub = self.create_publisher(CalvinState, "calvin/state", RELIABLE)
        self.event_pub = self.create_publisher(BehaviourEvent, "calvin/behaviour", RELIABLE)
        self.status_pub = self.create_publisher(DiagnosticArray, "/diagnostics", RELIABLE)
        # the arm's URDF for rviz's RobotModel / Foxglove (transient local, as robot_state_publisher offers it)
        from calvin_bridge.robot import panda_description

        layout = self.env.scene.layout
        self.description_pub = self.create_publisher(String, "/robot_description", LATCHED)
        self.description_pub.publish(String(data=panda_description(layout.robot_base_position,
                                                                   layout.robot_base_orientation)))
        io = MutuallyExclusiveCallbackGroup()
        self.create_subscription(ActionChunk, "action_chunk", self._on_chunk, RELIABLE, callback_group=io)
        self.create_service(ResetScene, "calvin/reset", self._on_reset, callback_group=io)
        self.held = self.cfg.start_held
        self._held_chunk: ActionChunk | None = None  # the latest chunk received while held
        self.create_service(Trigger, "calvin/start", self._on_start, callback_group=io)
        sim = MutuallyExclusiveCallbackGroup()
        self.create_timer(self.dt, self._control_tick, callback_group=sim)
        self.create_timer(1.0 / self.cfg.camera_hz, self._camera_tick, callback_group=sim)
        self.create_timer(1.0, self._publish_execution_stats, callback_group=io)
        self.get_logger().info(f"calvin bridge ready (scene: {self.env.scene.source}, {env_cfg.control_hz} Hz)")

    def _now(self) -> float:
        return self.sim_time if self.cfg.lockstep else self.get_clock().now().nanoseconds * 1e-9

    def _stamp(self):
        return seconds_to_time(self._now())

    def _on_chunk(self, msg: ActionChunk) -> None:
        if msg.action_space != "calvin_rel_ee":
            self.get_logger().warning(f"ignoring chunk in action space {short_repr(msg.action_space)} "
                                      "(need calvin_rel_ee)", throttle_duration_sec=5.0)
            return
        try:
            actions = chunk_from_msg(msg)
            with self._lock:
                if self.held:  # the world has not started: keep only the newest chunk, scheduled at the start
                    self._held_chunk = msg
                    return
                # lockstep: only the committed actions, then the world waits for the policy's next chunk
                # (the policy's closed loop as trained: replan after n_action_steps, no latency)
                self.schedule.add_chunk(actions, time_to_seconds(msg.header.stamp), msg.dt, msg.start_index,
                                        now=self._now(), commit_steps=msg.commit_steps if self.cfg.lockstep else 0,
                                        frozen_steps=msg.frozen_steps)
        except (MessageError, ValueError) as exc:
            self.get_logger().warning(f"rejected chunk {msg.sequence}: {exc}", throttle_duration_sec=2.0)

    def _on_start(self, _req: Trigger.Request, res: Trigger.Response) -> Trigger.Response:
        with self._lock:
            was_held, chunk = self.held, self._held_chunk
            self.held, self._held_chunk = False, None
            if was_held and chunk is not None:
                try:
                    self.schedule.add_chunk(chunk_from_msg(chunk), time_to_seconds(chunk.header.stamp), chunk.dt,
                                            chunk.start_index, now=self._now(),
                                            commit_steps=chunk.commit_steps if self.cfg.lockstep else 0,
                                            frozen_steps=chunk.frozen_steps)
                except (MessageError, ValueError) as exc:
                    self.get_logger().warning(f"held chunk {chunk.sequence} rejected at the start: {exc}")
        res.success = True
        res.message = (f"world started at {self._now():.6f} s" + (f" with chunk {chunk.sequence}" if chunk else "")
                       if was_held else f"world already running at {self._now():.6f} s")
        self.get_logger().info(res.message)
        return res

    def _control_tick(self) -> None:
        stepped = False
        with self._lock:
            if self.held:
                action, paused = None, True
            elif self.cfg.lockstep:
                action = self.schedule.next_action(self.sim_time + self.dt)
                paused = action is None  # the world waits for the policy
            else:
                action = self.schedule.next_action(self._now())
                paused = False
                if action is None:  # nothing due: hold the pose, keep the gripper as it is
                    action = np.array([0, 0, 0, 0, 0, 0, self.gripper])
            if paused:
                behaviour = self.last_behaviour
            else:
                action = np.clip(action, -1.0, 1.0)
                action[6] = 1.0 if action[6] >= 0 else -1.0
                self.gripper = action[6]
                self.obs, _, _, _, info = self.env.step(action)
                behaviour = info["behaviour"]
                stepped = True
                if self.cfg.lockstep:
                    self.sim_time += self.dt
                    images = self._render()  # every simulated step's frame: the policy's history [o_t-1, o_t]
            stamp = self._stamp()
        if self.clock_pub is not None:
            self.clock_pub.publish(Clock(clock=stamp))
        js = JointState(name=list(self.env.joint_names), position=[float(x) for x in self.env.joint_positions()])
        js.header.stamp = stamp
        self.joint_pub.publish(js)
        state = CalvinState(robot_obs=[float(x) for x in self.obs["robot_obs"]],
                            scene_obs=[float(x) for x in self.obs["scene_obs"]], behaviour=behaviour)
        state.header.stamp, state.header.frame_id = stamp, self.cfg.frame_id
        self.state_pub.publish(state)
        if stepped and self.cfg.lockstep:
            self._publish_images(images, stamp)
        if behaviour != self.last_behaviour:
            self.last_behaviour = behaviour
            if behaviour != "no_behaviour":
                ev = BehaviourEvent(behaviour=behaviour, detail=f"{behaviour} detected")
                ev.header.stamp = stamp
                self.event_pub.publish(ev)
                self.get_logger().info(f"{behaviour} detected")

    def _render(self) -> dict:
        self._rendered_at = self.sim_time
        self._images = self.env.render_cameras()
        return self._images

    def _camera_tick(self) -> None:
        with self._lock:
            if not (self.cfg.lockstep and self._rendered_at == self.sim_time):
                self._render()
            images = self._images  # world paused: the last frames are still current (no re-render)
            stamp = self._stamp()
        self._publish_images(images, stamp)

    def _publish_images(self, images: dict, stamp) -> None:
        for key, pub in self.image_pubs.items():
            pub.publish(rgb_to_image_msg(images[key], stamp=stamp, frame_id=f"{key}_camera"))

    def _publish_execution_stats(self) -> None:
        with self._lock:
            stats = asdict(self.schedule.stats)
            stamp = self._stamp()
        stats["ticks"] = stats["executed"] + stats["held"]
        status = DiagnosticStatus(name=f"{self.get_name()}: execution", hardware_id=self.get_name(),
                                  level=DiagnosticStatus.OK,
                                  message="lockstep (held = world paused)" if self.cfg.lockstep else "wall clock",
                                  values=[KeyValue(key=k, value=str(v)) for k, v in sorted(stats.items())])
        array = DiagnosticArray(status=[status])
        array.header.stamp = stamp
        self.status_pub.publish(array)

    def _scene_options(self, seed: int | None) -> dict:
        """Reset options drawing a scene in which every ``scene_for`` behaviour is possible ({} when unset)."""
        if not self.scene_behaviours:
            return {}
        rng = np.random.default_rng(seed)
        return {"scene": scene_for_behaviours(self.env, self.scene_behaviours, rng)}

    def _on_reset(self, req: ResetScene.Request, res: ResetScene.Response) -> ResetScene.Response:
        seed = None if req.seed < 0 else int(req.seed)
        options: dict = {}
        try:
            if len(req.scene_obs):
                if len(req.scene_obs) < 4 or not np.all(np.isfinite(req.scene_obs)):
                    raise ValueError("scene_obs needs at least 4 finite values (door, drawer, button, switch)")
                options["scene"] = dict(zip(SCENE_KEYS, map(float, req.scene_obs[:4])))
            else:
                options.update(self._scene_options(seed))
            if len(req.robot_joints):
                if len(req.robot_joints) != 7 or not np.all(np.isfinite(req.robot_joints)):
                    raise ValueError("robot_joints needs 7 finite values")
                options["robot_joints"] = list(map(float, req.robot_joints))
            with self._lock:
                self.schedule.clear()
                self.obs, _ = self.env.reset(seed=seed, options=options)
                self.last_behaviour = "no_behaviour"
                self.gripper = 1.0
        except (ValueError, KeyError) as exc:
            res.success, res.message = False, f"reset rejected: {exc}"
            return res
        res.success, res.message = True, "scene reset"
        return res

    def destroy_node(self) -> None:
        if hasattr(self, "env"):  # missing when the constructor failed
            self.env.close()
        super().destroy_node()


def main(argv=None) -> int:
    from dynaguide_ros.node_main import spin_node

    return spin_node(CalvinBridgeNode, argv)
