"""ROS-free glue: backend + chunk executor + safety layer, driven one control period at a time.

:class:`ArmController` is what the ROS node wraps; tests drive it directly with a simulated clock.
All public methods take the same lock, so chunks, e-stop and shutdown may arrive from other threads
than the one calling :meth:`tick`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from arx5_driver.backends import ArmBackend, ArmState
from arx5_driver.chunk_executor import ChunkExecutor, ChunkRejected, ExecutorChunk, JointStateBuffer
from arx5_driver.config import ExecutorConfig, SafetyConfig
from arx5_driver.kinematics import Kinematics
from arx5_driver.safety import Action, Mode, SafeCommand, SafetyLayer


@dataclass(frozen=True)
class ChunkVerdict:
    """Whether a submitted chunk was taken (``accepted``) and why not (``reason``)."""
    accepted: bool
    reason: str


class ArmController:
    """Runs the arm: :meth:`submit_chunk` (any thread), :meth:`tick` once per ``backend.control_dt``."""

    def __init__(self, backend: ArmBackend, safety_config: SafetyConfig, executor_config: ExecutorConfig,
                 kinematics: Kinematics | None = None):
        self.backend = backend
        self.kinematics = kinematics or Kinematics(backend.robot_config)
        self.safety = SafetyLayer(backend.robot_config, self.kinematics, safety_config, backend.control_dt)
        self.executor = ChunkExecutor(backend.robot_config, self.kinematics, executor_config)
        capacity = int(np.ceil(executor_config.history_s / backend.control_dt)) + 1
        self.history = JointStateBuffer(backend.dof, capacity)
        self._lock = threading.RLock()
        self.latest_state: ArmState = backend.read_state()
        self.last_command: SafeCommand = SafeCommand(Action.DAMP, None, None, "not started")
        self.accepted_chunks = 0
        self.rejected_chunks = 0
        self._closed = False
        self._last_tick: float | None = None

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def mode(self) -> Mode:
        return self.safety.mode

    def submit_chunk(self, chunk: ExecutorChunk, now: float) -> ChunkVerdict:
        """Plan and (if safe) start executing ``chunk``; ``now`` in the same clock as ``chunk.stamp``."""
        with self._lock:
            try:
                if self._closed:
                    raise ChunkRejected("driver is shut down")
                if self.safety.mode is Mode.ESTOP:
                    raise ChunkRejected("e-stop is latched; call reset_estop first")
                waypoints = self.executor.plan(chunk, now, self.history.at(chunk.stamp))
                measured = self.latest_state
                infeasible = self.safety.check_chunk(waypoints.times, waypoints.joint_pos, now)
                if infeasible is not None:
                    raise ChunkRejected(f"infeasible: {infeasible}")
                if self.safety.mode is not Mode.TRACKING:
                    refusal = self.safety.check_start(waypoints.joint_pos[0], measured)
                    if refusal is not None:
                        raise ChunkRejected(f"refusing to start: {refusal}")
                    if self.backend.is_damped:
                        try:
                            self.backend.hold()
                        except RuntimeError as exc:  # e.g. the SDK refusing to raise stiffness
                            self.backend.damp()
                            raise ChunkRejected(f"refusing to start: the arm could not be made stiff ({exc})") from exc
                    self.safety.activate(measured, now)
                else:
                    self.safety.note_fresh_chunk(now)
                # the trajectory continues from the last command at the time it was issued (the last tick)
                start = now if self._last_tick is None else min(now, self._last_tick)
                self.executor.accept(chunk.stamp, waypoints, start, self.safety.last_joint_pos,
                                     self.safety.last_gripper)
            except ChunkRejected as exc:
                self.rejected_chunks += 1
                return ChunkVerdict(False, str(exc))
            self.accepted_chunks += 1
            return ChunkVerdict(True, "accepted")

    def tick(self, now: float) -> SafeCommand:
        """One control period at time ``now`` (s): measure, sample the chunk, filter, command, advance."""
        with self._lock:
            if self._closed:
                return self.last_command
            state = self.backend.read_state()
            self.latest_state = state
            self.history.append(now, state.joint_pos, state.gripper_width)
            desired = self.executor.sample(now) if self.safety.mode is Mode.TRACKING else None
            command = self.safety.step(now, state, desired)
            if command.action is Action.DAMP:
                self.executor.clear()
                if not self.backend.is_damped:
                    self.backend.damp()
            else:
                if command.action is Action.HOLD and self.safety.mode is Mode.HOLDING:
                    self.executor.clear()
                self.backend.command_joints(command.joint_pos, command.gripper_width)
            self.last_command = command
            self._last_tick = now
            self.backend.tick()
            return command

    def estop(self) -> None:
        """Latch the e-stop and damp the arm immediately."""
        with self._lock:
            self.safety.estop()
            self.executor.clear()
            if not self._closed:
                self.backend.damp()

    def reset_estop(self) -> bool:
        """Unlatch the e-stop; True if it was latched.  The arm stays damped until a chunk passes the start check."""
        with self._lock:
            return self.safety.reset_estop()

    def deactivate(self, reason: str = "deactivated") -> None:
        """Stop executing and damp (not latched)."""
        with self._lock:
            self.safety.deactivate(reason)
            self.executor.clear()
            if not self._closed:
                self.backend.damp()

    def shutdown(self) -> None:
        """Damp and close the backend; further ticks and chunks do nothing."""
        with self._lock:
            if self._closed:
                return
            self.deactivate("shutdown")
            self.backend.close()
            self._closed = True
