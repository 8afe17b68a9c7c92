"""The stack's messages → rerun entities: what ``dynaguide view`` shows (live, or replayed from MCAP).

:class:`RerunSink` takes messages by topic name (relative, e.g. ``camera/rgb_static``) as ROS message objects —
rclpy's, or the objects ``mcap-ros2-support`` decodes from a ``dynaguide record`` file, which have the same
fields — and logs them to a ``rerun.RecordingStream`` on the timeline ``ros_time`` (the message header stamps;
shown as dates when they are after 2001, as durations from 0 otherwise).  No rclpy import here.

Entities (``world`` is the table frame of ``calvin/state`` / ``ee_pose``, metres):

============================================  ==============================================================
``camera/rgb_static``, ``camera/rgb_gripper``  the cameras (any ``camera/*`` image topic)
``world/ee``                                   end-effector position (point), ``world/ee/trajectory`` its path
``world/plan``                                 the newest chunk's predicted end-effector path
                                               (``policy/predicted_path``; green guided, orange unguided)
``guidance/goals/{positive,negative}/<i>``     the goal images in force (``guidance/goal_images``)
``guidance/state``                             text: guidance changes (revision, counts, s, σ, M)
``signal/metric/{proposal,chunk}``             Eq. 2 metric d of the unguided proposal and the chunk
``signal/positive_distance/{proposal,chunk}``  distance of the predicted outcome to the nearest positive goal
``signal/negative_distance/{proposal,chunk}``  ... to the nearest negative goal
``signal/nearest_goal``                        text: which goal the chunk's outcome is nearest
``events``                                     text: behaviour events (``calvin/behaviour``)
``compute/{compute_ms,p95_ms,budget_ms}``      sampler time per chunk, its p95, the execution budget
============================================  ==============================================================
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from dynaguide.guidance.signal import STAGES, signal_from_pairs
from dynaguide_ros import goal_images

TIMELINE = "ros_time"
TRAJECTORY_POINTS = 900          # end-effector path kept in view (30 s at 30 Hz)
SIGNAL_FIELDS = ("metric", "positive_distance", "negative_distance")
STAGE_COLOURS = {"proposal": [150, 150, 150], "chunk": [40, 170, 60]}
SERIES_NAMES = {"compute_ms": "compute (ms)", "p95_ms": "compute p95 (ms)", "budget_ms": "budget (ms)"}


def stamp_seconds(header) -> float:
    return float(header.stamp.sec) + float(header.stamp.nanosec) * 1e-9


def normalise_topic(topic: str) -> str:
    """``/camera/rgb_static`` → ``camera/rgb_static`` (MCAP channels are fully qualified)."""
    return topic.lstrip("/")


class RerunSink:
    """Logs the stack's messages to ``rec`` (a ``rerun.RecordingStream``); ``counts`` per topic logged.

    ``log(topic, msg)`` dispatches on the (relative) topic name; unknown topics are ignored.  A message that cannot
    be shown (a malformed image) is skipped and counted in ``skipped``.
    """

    def __init__(self, rec) -> None:
        import rerun as rr

        self.rr = rr
        self.rec = rec
        self.counts: dict[str, int] = {}
        self.skipped: dict[str, int] = {}
        self.trajectory: list[np.ndarray] = []
        self._goal_entities: list[str] = []
        self._handlers: dict[str, Callable] = {
            "calvin/state": self._calvin_state, "ee_pose": self._ee_pose,
            "policy/predicted_path": self._predicted_path, "policy/diagnostics": self._diagnostics,
            "policy/guidance_signal": self._signal, "calvin/behaviour": self._behaviour,
            "guidance/state": self._guidance_state, goal_images.TOPIC: self._goal_images,
        }
        self._static_styles()

    # ------------------------------------------------------------------------- setup
    def _static_styles(self) -> None:
        rr, rec = self.rr, self.rec
        rec.log("world", rr.ViewCoordinates.RIGHT_HAND_Z_UP, static=True)
        for field in SIGNAL_FIELDS:
            for stage in STAGES:
                rec.log(f"signal/{field}/{stage}", rr.SeriesLines(colors=[STAGE_COLOURS[stage]],
                                                                   names=[f"{field} ({stage})"]), static=True)
        for key, name in SERIES_NAMES.items():
            colour = [200, 60, 60] if key == "budget_ms" else [60, 90, 200] if key == "compute_ms" else [120, 120, 220]
            rec.log(f"compute/{key}", rr.SeriesLines(colors=[colour], names=[name]), static=True)

    # ------------------------------------------------------------------------- dispatch
    def log(self, topic: str, msg) -> bool:
        """Log one message of ``topic``; True if it was shown."""
        topic = normalise_topic(topic)
        handler = self._handlers.get(topic)
        if handler is None and topic.startswith("camera/"):
            handler = lambda m: self._image(topic, m)  # noqa: E731
        if handler is None:
            return False
        try:
            handler(msg)
        except (ValueError, TypeError, AttributeError, IndexError):   # MessageError is a ValueError
            self.skipped[topic] = self.skipped.get(topic, 0) + 1
            return False
        self.counts[topic] = self.counts.get(topic, 0) + 1
        return True

    def _at(self, header) -> None:
        self._set_time(stamp_seconds(header))

    def _set_time(self, seconds: float) -> None:
        """Stamps after 2001 are wall-clock (or a sim clock started at wall time): shown as dates; smaller ones
        as durations from 0 (a simulator clock from 0)."""
        if seconds > 1e9:
            self.rec.set_time(TIMELINE, timestamp=seconds)
        else:
            self.rec.set_time(TIMELINE, duration=seconds)

    # ------------------------------------------------------------------------- handlers
    def _image(self, topic: str, msg) -> None:
        from dynaguide_ros.conversions import rgb_from_image_msg

        rgb = rgb_from_image_msg(msg)
        self._at(msg.header)
        self.rec.log(topic, self.rr.Image(rgb))

    def _ee(self, header, xyz: np.ndarray) -> None:
        if not np.all(np.isfinite(xyz)):
            raise ValueError("non-finite end-effector position")
        self._at(header)
        self.trajectory.append(xyz)
        del self.trajectory[:-TRAJECTORY_POINTS]
        self.rec.log("world/ee", self.rr.Points3D([xyz], radii=[0.01], colors=[[230, 230, 40]]))
        if len(self.trajectory) >= 2 and len(self.trajectory) % 5 == 0:   # the path, every 5th step
            self.rec.log("world/ee/trajectory", self.rr.LineStrips3D([np.stack(self.trajectory)], radii=[0.002],
                                                                     colors=[[90, 150, 230]]))

    def _calvin_state(self, msg) -> None:
        self._ee(msg.header, np.asarray(msg.robot_obs[:3], dtype=np.float64))

    def _ee_pose(self, msg) -> None:
        p = msg.pose.position
        self._ee(msg.header, np.array([p.x, p.y, p.z], dtype=np.float64))

    def _predicted_path(self, msg) -> None:
        strips, colours = [], []
        for m in msg.markers:
            if len(m.points) < 2:
                continue
            strips.append(np.array([[p.x, p.y, p.z] for p in m.points], dtype=np.float64))
            colours.append([int(255 * m.color.r), int(255 * m.color.g), int(255 * m.color.b)])
        if not strips:
            return
        self._at(msg.markers[0].header)
        self.rec.log("world/plan", self.rr.LineStrips3D(strips, radii=[0.004], colors=colours))

    def _diagnostics(self, msg) -> None:
        self._at(msg.header)
        for key, value in (("compute_ms", msg.compute_ms), ("p95_ms", msg.compute_p95_ms),
                           ("budget_ms", msg.budget_ms)):
            if math.isfinite(value):
                self.rec.log(f"compute/{key}", self.rr.Scalars(float(value)))

    def _signal(self, msg) -> None:
        for status in msg.status:
            pairs = {kv.key: kv.value for kv in status.values}
            signal = signal_from_pairs(pairs)
            if signal is None:
                raise ValueError("no guidance signal in the message")
            self._at(msg.header)
            for stage in STAGES:
                score = getattr(signal, stage)
                for field in SIGNAL_FIELDS:
                    value = getattr(score, field)
                    if math.isfinite(value):
                        self.rec.log(f"signal/{field}/{stage}", self.rr.Scalars(value))
            guided = pairs.get("guided") == "true"
            self.rec.log("signal/nearest_goal", self.rr.TextLog(
                f"chunk {pairs.get('sequence', '?')} ({'guided' if guided else 'unguided'}): nearest "
                f"{signal.chunk.nearest_goal or '-'} (proposal: {signal.proposal.nearest_goal or '-'}); "
                f"d {signal.proposal.metric:.3g} -> {signal.chunk.metric:.3g}", level="INFO"))

    def _behaviour(self, msg) -> None:
        self._at(msg.header)
        detail = f" ({msg.detail})" if msg.detail else ""
        self.rec.log("events", self.rr.TextLog(f"behaviour: {msg.behaviour}{detail}", level="INFO"))

    def _guidance_state(self, msg) -> None:
        self._at(msg.header)
        text = (f"guidance revision {msg.revision} ({msg.source}): {msg.num_positive} positive, {msg.num_negative} "
                f"negative, s {msg.scale:g}, sigma {msg.sigma:g}, M {msg.stochastic_steps}"
                if msg.active else f"guidance revision {msg.revision} ({msg.source}): none, the base policy")
        self.rec.log("guidance/state", self.rr.TextLog(text, level="INFO"))
        self.rec.log("events", self.rr.TextLog(text, level="DEBUG"))
        if not msg.active:
            self._clear_goals()

    def _clear_goals(self) -> None:
        for entity in self._goal_entities:
            self.rec.log(entity, self.rr.Clear(recursive=False))
        self._goal_entities = []

    def _goal_images(self, msg) -> None:
        self._at(msg.header)
        layout = goal_images.parse_layout(msg.header.frame_id)
        self._clear_goals()
        if layout is None:          # "cleared" (or a foreign image): no goals in force
            return
        from dynaguide_ros.conversions import rgb_from_image_msg

        mosaic = rgb_from_image_msg(msg)
        for kind, index, img in goal_images.split_mosaic(mosaic, layout):
            entity = f"guidance/goals/{kind}/{index}"
            self.rec.log(entity, self.rr.Image(img))
            self._goal_entities.append(entity)
