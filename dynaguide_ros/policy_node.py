"""``policy_node`` — the (guided) diffusion policy as a ROS node.

Inputs: camera images (one topic per policy camera: ``camera/<key>``), proprioception
(``calvin/state`` robot_obs, or ``joint_states``), the policy-camera embedding (``embedding``) and the
guidance in force (``guidance/set``, transient-local).  Every ``replan_period_s`` it builds the
observation (staleness-checked), runs :class:`dynaguide.guided_runner.GuidedPolicyRunner` and publishes
``action_chunk`` stamped with the observation time, ``policy/diagnostics`` and
``policy/predicted_path`` (rviz markers of the chunk's integrated end-effector path; it starts at the
end effector: ``calvin/state`` robot_obs[:3], or ``ee_pose`` with ``proprio_source: joint_states``).
A chunk that should have been guided but whose guidance was not finite is sampled unguided instead
(``guided = false`` in ``policy/diagnostics``) and reported as a WARN on ``/diagnostics``.

When the dynamics checkpoint records its embedder, embeddings and guidance whose ``embedder_id`` names
another embedder are refused with a warning (the last good embedding / guidance stays in force).

Real time: sampling runs on its own thread, so in wall-clock mode the robot executes the previous chunk while
the next one is computed; the next chunk starts as soon as the newest observation is ``replan_period_s`` newer
than the last one used, or as soon as the sampler is free when a chunk takes longer than that (back-to-back).
The executor (bridge or driver) splices it in from its first action still in the future
(:mod:`dynaguide.chunk_execution`), so every executed action comes from an observation c to c + ``replan_period_s``
old (c = compute time).  ``policy/diagnostics`` carries the compute p95 over the last 20 chunks against the
execution budget ``n_action_steps · action_dt`` and a WARN is logged while it is over budget;
``dynaguide bench realtime --config <graph.yaml>`` measures the same before a robot is involved
(:mod:`dynaguide.realtime_bench`).

Real-time chunking (``runner.rtc.enabled``): each chunk is sampled to agree with the previous chunk's actions that
run while it is computed — d = ceil(p95 observation-to-publication latency / ``action_dt``), measured on the node's
clock (0 under a lockstep simulator: unchanged there; :class:`dynaguide.guided_runner.RTCSchedule`).  How many leading
actions were frozen is published with the chunk (``ActionChunk.frozen_steps``, 0 without RTC) and in the
``/diagnostics`` status; the executor keeps the previous chunk's actions at those times and switches to the new
chunk at its first free action (:mod:`dynaguide.chunk_execution`).

The guidance signal (:mod:`dynaguide.guidance.signal`): for every chunk sampled while goals are set (guided, or
s = 0), ``policy/guidance_signal`` (``diagnostic_msgs/DiagnosticArray``, stamped with the chunk's observation
time) carries one status whose key/values are the predicted outcome's distance to the nearest positive and
negative goal, their indices, the nearest goal and the metric d, for the unguided proposal and for the chunk
(keys ``proposal.*`` / ``chunk.*``), with ``sequence``, ``guided`` and ``guidance_revision`` of the chunk.
``dynaguide view`` plots it; :func:`dynaguide.guidance.signal.signal_from_pairs` reads it back.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Header
from visualization_msgs.msg import Marker, MarkerArray
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Point, PoseStamped

from dynaguide.chunk_execution import ObservationHistory
from dynaguide.realtime_bench import LatencyMonitor
from dynaguide.guided_runner import EmbedderMismatchError, GuidedPolicyRunner, RTCSchedule, RunnerConfig
from dynaguide_msgs.msg import ActionChunk, CalvinState, GuidanceSet, PatchEmbedding, PolicyDiagnostics
from dynaguide_ros.conversions import (MessageError, chunk_to_msg, embedding_from_msg, rgb_from_image_msg,
                                       seconds_to_time, time_to_seconds)
from dynaguide_ros.params import declare_config
from dynaguide_ros.qos import LATCHED, RELIABLE, SENSOR


SIGNAL_TOPIC = "policy/guidance_signal"
"""Per-chunk guidance signal (DiagnosticArray key/values, :meth:`PolicyNode._publish_signal`)."""


@dataclass
class PolicyNodeConfig:
    # a directory with policy/ and dynamics/ (e.g. the shipped checkpoints/calvin_play_gripper); relative paths
    # resolve under the repo / installed package first, then the current directory.  runner.policy_checkpoint /
    # runner.dynamics_checkpoint, when set, take precedence.  All empty: UNTRAINED random models (plumbing only).
    models: str = ""
    runner: RunnerConfig = field(default_factory=RunnerConfig)
    action_space: str = "calvin_rel_ee"
    action_dt: float = 1.0 / 30.0
    replan_period_s: float = 0.5
    proprio_source: str = "calvin_state"      # or "joint_states"
    max_observation_age_s: float = 1.0
    max_embedding_age_s: float = 2.0
    frame_id: str = "world"
    path_scale_m: float = 0.02                # calvin_rel_ee: metres per action unit (for markers)
    lockstep: bool = False                    # the simulator waits for the policy (calvin_bridge lockstep): act
                                              # only once the state and, when guided, the embedding of the newest
                                              # frame have arrived — the inputs the policy was trained on, and the
                                              # same run for the same seed


def integrate_path(start_xyz: np.ndarray, actions: np.ndarray, action_space: str, scale: float) -> np.ndarray:
    """End-effector path ``(T + 1, 3)`` implied by a chunk of relative actions (for visualisation)."""
    if action_space == "calvin_rel_ee":
        steps = np.clip(actions[:, :3], -1, 1) * scale
    elif action_space == "ee_delta":
        steps = actions[:, :3]
    else:
        return np.asarray(start_xyz, dtype=np.float64)[None]
    return np.vstack([start_xyz, start_xyz + np.cumsum(steps, axis=0)])


def resolved_runner_config(cfg: PolicyNodeConfig) -> RunnerConfig:
    """``cfg.runner`` with its checkpoints filled from ``cfg.models`` and every path resolved
    (:func:`dynaguide_ros.paths.resolve_model_path`: not relative to the current directory)."""
    from dataclasses import replace

    from dynaguide_ros.paths import resolve_model_path

    policy, dynamics = cfg.runner.policy_checkpoint, cfg.runner.dynamics_checkpoint
    if cfg.models:
        models = Path(resolve_model_path(cfg.models))
        policy = policy or str(models / "policy")
        dynamics = dynamics or str(models / "dynamics")
    return replace(cfg.runner, policy_checkpoint=resolve_model_path(policy),
                   dynamics_checkpoint=resolve_model_path(dynamics))


class PolicyNode(Node):
    def __init__(self) -> None:
        super().__init__("policy_node")
        self.cfg = declare_config(self, PolicyNodeConfig)
        if self.cfg.proprio_source not in ("calvin_state", "joint_states"):
            raise ValueError(f"proprio_source must be calvin_state or joint_states, got {self.cfg.proprio_source!r}")
        self.runner = GuidedPolicyRunner.from_config(resolved_runner_config(self.cfg))
        if not self.runner.trained:
            self.get_logger().warning("no checkpoints configured: running an UNTRAINED, randomly initialised policy")
        elif self.runner.expected_embedder_id is None:
            self.get_logger().warning("the dynamics checkpoint records no embedder: embedder ids of observation and "
                                      "goal embeddings cannot be checked")
        else:
            self.get_logger().info(f"dynamics model trained on embedder {self.runner.expected_embedder_id}")
        self.n_obs = self.runner.policy.n_obs_steps
        # compute against the time the chunk's committed actions last (dynaguide.realtime_bench)
        self.latency = LatencyMonitor(self.runner.policy.n_action_steps * self.cfg.action_dt * 1e3)
        self.rtc_schedule = RTCSchedule(self.cfg.action_dt)   # real-time chunking's delay and shift (runner.rtc)
        # the actions executed before the next replan (a lockstep simulator runs exactly these, then waits): the
        # replanning period in steps — with replan_period_s = n_action_steps * action_dt, the policy's n_action_steps
        horizon_left = self.runner.policy.horizon - self.runner.action_offset
        self.commit_steps = min(horizon_left, max(1, round(self.cfg.replan_period_s / self.cfg.action_dt)))
        self._lock = threading.Lock()
        # one entry per distinct stamp: a lockstep sim republishes its last frame and state while it waits
        self.frames = {k: ObservationHistory(self.n_obs) for k in self.runner.policy.cfg.image_keys}
        self.proprio = ObservationHistory(self.n_obs)
        self.tcp_xyz = np.zeros(3)
        self.embedding: tuple[float, np.ndarray, str] | None = None
        self.guidance_revision = 0
        self._replan = False  # a guidance change: replan from the current observation at once
        self.sequence = 0
        data = MutuallyExclusiveCallbackGroup()
        for key in self.frames:
            self.create_subscription(Image, f"camera/{key}", lambda m, k=key: self._on_image(k, m), SENSOR,
                                     callback_group=data)
        if self.cfg.proprio_source == "calvin_state":
            self.create_subscription(CalvinState, "calvin/state", self._on_calvin_state, RELIABLE, callback_group=data)
        else:
            self.create_subscription(JointState, "joint_states", self._on_joint_state, RELIABLE, callback_group=data)
            self.create_subscription(PoseStamped, "ee_pose", self._on_ee_pose, RELIABLE, callback_group=data)
        self.create_subscription(PatchEmbedding, "embedding", self._on_embedding, RELIABLE, callback_group=data)
        self.create_subscription(GuidanceSet, "guidance/set", self._on_guidance, LATCHED, callback_group=data)
        self.chunk_pub = self.create_publisher(ActionChunk, "action_chunk", RELIABLE)
        self.diag_pub = self.create_publisher(PolicyDiagnostics, "policy/diagnostics", RELIABLE)
        self.marker_pub = self.create_publisher(MarkerArray, "policy/predicted_path", RELIABLE)
        self.status_pub = self.create_publisher(DiagnosticArray, "/diagnostics", RELIABLE)
        self.signal_pub = self.create_publisher(DiagnosticArray, SIGNAL_TOPIC, RELIABLE)
        # Sampling runs on a thread of its own, not in an executor callback: a long callback keeps its timer
        # ready, and rclpy's MultiThreadedExecutor then spins holding the GIL (chunks took 10x longer).
        # Replanning is paced by observation stamps (sim time with a lockstep simulator, which pauses while
        # the policy thinks — a sim-time timer would never fire), polled every 20 ms.
        self._last_obs_used = -float("inf")
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._loop, name="policy_sampler", daemon=True)
        self._worker.start()
        self.get_logger().info(f"policy node ready (cameras {list(self.frames)}, To={self.n_obs}, "
                               f"T={self.runner.policy.horizon}, trained={self.runner.trained})")

    # ------------------------------------------------------------------------- inputs
    def _on_image(self, key: str, msg: Image) -> None:
        try:
            rgb = rgb_from_image_msg(msg)
        except MessageError as exc:
            self.get_logger().warning(f"camera/{key}: {exc}", throttle_duration_sec=5.0)
            return
        with self._lock:
            self.frames[key].append(time_to_seconds(msg.header.stamp), rgb)

    def _on_calvin_state(self, msg: CalvinState) -> None:
        if len(msg.robot_obs) != self.cfg.runner.proprio_dim:
            self.get_logger().warning(f"calvin/state robot_obs has {len(msg.robot_obs)} values, "
                                      f"expected {self.cfg.runner.proprio_dim}", throttle_duration_sec=5.0)
            return
        with self._lock:
            self.proprio.append(time_to_seconds(msg.header.stamp), np.asarray(msg.robot_obs, dtype=np.float32))
            self.tcp_xyz = np.asarray(msg.robot_obs[:3], dtype=np.float64)

    def _on_joint_state(self, msg: JointState) -> None:
        pos = np.asarray(msg.position, dtype=np.float32)
        if len(pos) != self.cfg.runner.proprio_dim:
            self.get_logger().warning(f"joint_states has {len(pos)} positions, "
                                      f"expected {self.cfg.runner.proprio_dim}", throttle_duration_sec=5.0)
            return
        with self._lock:
            self.proprio.append(time_to_seconds(msg.header.stamp), pos)

    def _on_ee_pose(self, msg: PoseStamped) -> None:
        """End-effector position in ``frame_id`` (the arm's base frame): where predicted paths start."""
        p = msg.pose.position
        xyz = np.array([p.x, p.y, p.z], dtype=np.float64)
        if np.all(np.isfinite(xyz)):
            with self._lock:
                self.tcp_xyz = xyz

    def _on_embedding(self, msg: PatchEmbedding) -> None:
        try:
            self.runner.check_embedder_id(msg.embedder_id, "observation")
            tokens = embedding_from_msg(msg)
        except EmbedderMismatchError as exc:
            self.get_logger().warning(f"dropping embedding: {exc}", throttle_duration_sec=5.0)
            return
        except MessageError as exc:
            self.get_logger().warning(f"embedding: {exc}", throttle_duration_sec=5.0)
            return
        with self._lock:
            self.embedding = (time_to_seconds(msg.header.stamp), tokens, msg.embedder_id)

    def _on_guidance(self, msg: GuidanceSet) -> None:
        if not msg.active:
            with self._lock:
                self.runner.clear_guidance()
                self.guidance_revision = msg.revision
                self._replan = True
            self.get_logger().info(f"guidance revision {msg.revision}: inactive, running the base policy")
            return
        try:
            pos = np.stack([embedding_from_msg(e) for e in msg.positive]) if msg.positive else None
            neg = np.stack([embedding_from_msg(e) for e in msg.negative]) if msg.negative else None
            # the message carries s, sigma and M in force (the manager resolved "keep the current value")
            settings = self.runner.guidance_defaults.retuned(scale=msg.scale, sigma=msg.sigma,
                                                             stochastic_steps=msg.stochastic_steps)
            self.runner.set_guidance_tokens(pos, neg, settings,
                                            embedder_ids=[e.embedder_id for e in (*msg.positive, *msg.negative)])
        except EmbedderMismatchError as exc:
            self.get_logger().warning(f"ignoring guidance revision {msg.revision}: {exc}; previous guidance kept")
            return
        except (MessageError, ValueError) as exc:
            self.get_logger().error(f"ignoring guidance revision {msg.revision}: {exc}; previous guidance kept")
            return
        with self._lock:
            self.guidance_revision = msg.revision
            self._replan = True
        self.get_logger().info(f"guidance revision {msg.revision} in force: {len(msg.positive)} positive, "
                               f"{len(msg.negative)} negative, scale {msg.scale:g}, sigma {msg.sigma:g}")

    # ------------------------------------------------------------------------- acting
    def _loop(self) -> None:
        while not self._stop.wait(0.02):
            try:
                self._tick()
            except Exception as exc:  # never let the sampler thread die silently
                if not self.context.ok():
                    break  # shutting down: the context is gone
                self.get_logger().error(f"policy tick failed: {exc!r}", throttle_duration_sec=2.0)

    def destroy_node(self) -> None:
        # attributes may be missing when the constructor failed (rclpy then destroys the half-built node)
        if hasattr(self, "_stop"):
            self._stop.set()
            self._worker.join(timeout=5.0)
        if hasattr(self, "runner"):
            self.runner.close()
        super().destroy_node()

    def _tick(self) -> None:
        now = self.get_clock().now().nanoseconds * 1e-9
        with self._lock:
            if any(len(f) == 0 for f in self.frames.values()) or len(self.proprio) == 0:
                self.get_logger().info("waiting for camera images and proprioception", throttle_duration_sec=5.0)
                return
            obs_stamp = min(f.newest_stamp for f in self.frames.values())
            # half an action period of slack: a period of 8 / 30 s written as 0.2667 must not wait for a 9th step;
            # a guidance change replans from the current observation at once
            if (not self._replan
                    and obs_stamp - self._last_obs_used < self.cfg.replan_period_s - 0.5 * self.cfg.action_dt):
                return  # the last chunk is recent enough
            if self.cfg.lockstep:  # the world waits: take the state and the embedding of this very frame
                if self.proprio.newest_stamp < obs_stamp:
                    return
                if self.runner.guidance is not None and (self.embedding is None or self.embedding[0] < obs_stamp):
                    return
            # a guidance change restarts the sampling noise from runner.seed: the first chunk under new guidance
            # is the same whether or not an earlier chunk was computed (a held world's demo start is repeatable)
            reseed, self._replan = self._replan, False
            revision = self.guidance_revision
            images = {k: np.stack(f.padded(self.n_obs)) for k, f in self.frames.items()}
            proprio = np.stack(self.proprio.padded(self.n_obs))
            embedding = self.embedding
            tcp = self.tcp_xyz.copy()
        age = now - obs_stamp
        if age > self.cfg.max_observation_age_s:
            self.get_logger().warning(f"observation is {age:.2f} s old (limit {self.cfg.max_observation_age_s} s): "
                                      "not acting", throttle_duration_sec=2.0)
            return
        tokens, tokens_id = None, None
        if self.runner.guidance is not None:
            if embedding is None or now - embedding[0] > self.cfg.max_embedding_age_s:
                self.get_logger().warning("guidance active but the observation embedding is missing or stale: "
                                          "not acting", throttle_duration_sec=2.0)
                return
            tokens, tokens_id = embedding[1], embedding[2]
        if reseed:
            self.runner.generator.manual_seed(self.cfg.runner.seed)
        rtc_shift, rtc_delay = self.rtc_schedule.request(obs_stamp)
        try:
            result = self.runner.act(images, proprio, tokens, tokens_id, rtc_shift=rtc_shift, rtc_delay=rtc_delay)
        except EmbedderMismatchError as exc:
            self.get_logger().warning(f"not acting: {exc}", throttle_duration_sec=2.0)
            return
        except ValueError as exc:
            self.get_logger().error(f"policy step failed: {exc}", throttle_duration_sec=2.0)
            return
        self._last_obs_used = obs_stamp
        stamp_msg = seconds_to_time(obs_stamp)
        self.sequence += 1
        chunk = chunk_to_msg(result.actions, self.cfg.action_space, stamp_msg, self.cfg.action_dt,
                             start_index=self.runner.action_offset, sequence=self.sequence, guided=result.guided,
                             frame_id=self.cfg.frame_id, commit_steps=self.commit_steps,
                             frozen_steps=result.frozen_steps)
        self.chunk_pub.publish(chunk)
        latency_ms = (self.get_clock().now().nanoseconds * 1e-9 - obs_stamp) * 1e3
        self.rtc_schedule.done(obs_stamp, latency_ms)
        self.latency.add(result.compute_ms)
        if not self.latency.keeps_up:
            self.get_logger().warning(
                f"falling behind: chunk compute p95 {self.latency.p95_ms:.0f} ms over the last chunks exceeds the "
                f"execution budget {self.latency.budget_ms:.0f} ms (n_action_steps x action_dt); in wall-clock mode "
                "the robot waits for actions — `dynaguide bench realtime` lists cheaper settings",
                throttle_duration_sec=10.0)
        diag = PolicyDiagnostics(sequence=self.sequence, guided=result.guided, latency_ms=float(latency_ms),
                                 compute_ms=float(result.compute_ms), metric=float(result.metric),
                                 observation_age_ms=float(age * 1e3), guidance_revision=int(revision),
                                 compute_p95_ms=float(self.latency.p95_ms), budget_ms=float(self.latency.budget_ms),
                                 keeps_up=bool(self.latency.keeps_up))
        diag.header.stamp = stamp_msg
        self.diag_pub.publish(diag)
        self._publish_status(result, stamp_msg)
        self._publish_signal(result, stamp_msg, revision)
        self._publish_markers(tcp, result.actions[self.runner.action_offset:], stamp_msg, result.guided)

    def _publish_status(self, result, stamp) -> None:
        """``/diagnostics``: WARN while guidance is in force but could not be used for the chunk."""
        if result.fallback:
            self.get_logger().warning(result.fallback, throttle_duration_sec=5.0)
        status = DiagnosticStatus(name=f"{self.get_name()}: guidance", hardware_id=self.get_name(),
                                  level=DiagnosticStatus.WARN if result.fallback else DiagnosticStatus.OK,
                                  message=result.fallback[:500] or ("guided" if result.guided else "unguided"),
                                  values=[KeyValue(key="guidance_revision", value=str(self.guidance_revision)),
                                          KeyValue(key="sequence", value=str(self.sequence)),
                                          KeyValue(key="frozen_steps", value=str(result.frozen_steps))])
        self.status_pub.publish(DiagnosticArray(header=Header(stamp=stamp), status=[status]))

    def _publish_signal(self, result, stamp, revision: int) -> None:
        """``policy/guidance_signal``: the chunk's guidance signal as key/values (only while goals are set)."""
        if result.signal is None:
            return
        values = [KeyValue(key="sequence", value=str(self.sequence)),
                  KeyValue(key="guided", value=str(bool(result.guided)).lower()),
                  KeyValue(key="guidance_revision", value=str(revision))]
        values += [KeyValue(key=k, value=v) for k, v in result.signal.as_pairs()]
        status = DiagnosticStatus(name=f"{self.get_name()}: guidance signal", hardware_id=self.get_name(),
                                  level=DiagnosticStatus.OK, message=result.signal.chunk.nearest_goal,
                                  values=values)
        self.signal_pub.publish(DiagnosticArray(header=Header(stamp=stamp), status=[status]))

    def _publish_markers(self, start: np.ndarray, actions: np.ndarray, stamp, guided: bool) -> None:
        path = integrate_path(start, actions, self.cfg.action_space, self.cfg.path_scale_m)
        m = Marker()
        m.header.stamp, m.header.frame_id = stamp, self.cfg.frame_id
        m.ns, m.id, m.type, m.action = "predicted_path", 0, Marker.LINE_STRIP, Marker.ADD
        m.scale.x = 0.005
        m.color.a, m.color.r, m.color.g, m.color.b = 1.0, (0.1 if guided else 0.9), (0.8 if guided else 0.6), 0.2
        m.pose.orientation.w = 1.0
        m.points = [Point(x=float(x), y=float(y), z=float(z)) for x, y, z in path]
        self.marker_pub.publish(MarkerArray(markers=[m]))


def main(argv=None) -> int:
    from dynaguide_ros.node_main import spin_node

    return spin_node(PolicyNode, argv)
