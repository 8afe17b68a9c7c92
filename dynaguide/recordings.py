"""``dynaguide dataset from-mcap`` — a recording of the ROS graph (``dynaguide record``) → our HDF5 training layout.

Reads the MCAP file with the PyPI ``mcap`` reader and ``mcap-ros2-support``'s decoder (the schemas in the
file, no ROS installation needed) and writes segments with :func:`dynaguide.data.writer.write_demo` (layout in
:mod:`dynaguide.data.schema`)::

    data/demo_i/actions          (L, A) float32   the action executed at each control step, raw units
    data/demo_i/obs/<camera>     (L, H, W, 3) uint8  latest frame of that camera at or before the step
    data/demo_i/obs/proprio      (L, P) float32   robot state at the step (CalvinState.robot_obs or
                                                  JointState.position)
    data/demo_i/obs/states       (L, 24) float32  CalvinState.scene_obs (calvin_state proprio only)
    attrs: behavior (when an event labels the segment), t_start / t_end (stamps, s), guided_fraction,
           held_steps, source

Control steps.  The robot-state topic defines them: one step per distinct header stamp (the lockstep sim
re-publishes an unchanged stamp while the world waits for the policy; those repeats are not steps).
Step ``k`` is the observation at stamp ``t_k``; the action executed from it is the one due at ``t_k + dt``.

Executed actions are reconstructed from the recorded chunks with the executor's own rules — the chunks are
replayed through :class:`dynaguide.chunk_execution.ActionSchedule`: each chunk's action ``i`` (``i >= start_index``)
is scheduled at ``stamp + (i - start_index + 1) * dt``, the newest chunk wins from its first action still in
the future when it arrives (after its ``frozen_steps``, which real-time chunking made agree with the previous
chunk's queued actions), actions already due on arrival are never queued, and a step with nothing due
holds (relative action spaces: zero motion, gripper kept; absolute ones: the last action).  A chunk's
arrival time is taken as the stamp of the last robot state the recorder had received before the chunk
(the executor's clock at that moment, to within one state message).  Leading steps before the first
executed action and trailing steps after the last one are dropped; so is any step without a camera frame
no older than ``max_image_age_s`` (segments never cross such a gap).

Segmentation: ``window`` — fixed windows of ``window`` steps every ``stride`` steps (the final frame of the
window is its outcome; a behaviour event inside the window labels it); ``behaviour`` — one segment per
behaviour event (``calvin/behaviour``), from the previous event (or the start of the run) to the step of
this event, at most ``window`` steps (0 = no limit), labelled with the behaviour; the tail after the last
event has no outcome and is dropped.

Memory: the decoded camera frames of the recording are held while converting (≈ its image payload).
"""

from __future__ import annotations

import json
import struct
from bisect import bisect_right
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from dynaguide.inputs import InputError

RELATIVE_ACTION_SPACES = ("calvin_rel_ee", "ee_delta")
"""Action spaces whose hold action is zero motion with the gripper kept (see ``ActionChunk.msg``)."""

MCAP_MAGIC = b"\x89MCAP0\r\n"
"""The first bytes of every MCAP file."""

PROPRIO_SOURCES = {"calvin_state": "calvin/state", "joint_states": "joint_states"}
SEGMENT_MODES = ("window", "behaviour")


class RecordingError(InputError):
    """The recording cannot be converted (missing topics, no chunks, inconsistent frames...)."""


@dataclass
class FromMcapConfig:
    """How a recording becomes segments.

    Attributes:
        cameras: image topics; each becomes ``obs/<last name component>`` (``camera/rgb_static`` → ``rgb_static``).
        proprio: ``calvin_state`` (CalvinState.robot_obs, 15 values) or ``joint_states`` (JointState.position).
        state_topic: the robot-state topic ("" = the default of ``proprio``: ``calvin/state`` / ``joint_states``).
        chunk_topic / behaviour_topic / guidance_topic: the graph's ``action_chunk``, ``calvin/behaviour``,
            ``guidance/state`` topics.
        segment: ``window`` or ``behaviour`` (module docstring).
        window: steps per window (``window``) / most steps per segment (``behaviour``, 0 = no limit).
        stride: steps between window starts (0 = ``window``: no overlap).
        min_length: shorter segments are dropped (steps).
        max_image_age_s: a step whose latest frame of any camera is older than this (stamp time, s) is dropped.
        compression: HDF5 compression of the images (``gzip``, or ``none``).
    """

    cameras: tuple[str, ...] = ("camera/rgb_static",)
    proprio: str = "calvin_state"
    state_topic: str = ""
    chunk_topic: str = "action_chunk"
    behaviour_topic: str = "calvin/behaviour"
    guidance_topic: str = "guidance/state"
    segment: str = "window"
    window: int = 32
    stride: int = 0
    min_length: int = 2
    max_image_age_s: float = 0.5
    compression: str = "gzip"

    def __post_init__(self) -> None:
        self.cameras = tuple(self.cameras)
        if not self.cameras:
            raise ValueError("give at least one camera topic")
        if self.proprio not in PROPRIO_SOURCES:
            raise ValueError(f"proprio must be one of {sorted(PROPRIO_SOURCES)}, got {self.proprio!r}")
        if self.segment not in SEGMENT_MODES:
            raise ValueError(f"segment must be one of {SEGMENT_MODES}, got {self.segment!r}")
        if self.window < 0 or self.stride < 0 or (self.segment == "window" and self.window < 1):
            raise ValueError("window must be >= 1 for window segments (>= 0 for behaviour segments), stride >= 0")
        if self.min_length < 1 or not self.max_image_age_s > 0:
            raise ValueError("min_length must be >= 1 and max_image_age_s positive")
        if self.compression not in ("gzip", "none"):
            raise ValueError(f"compression must be 'gzip' or 'none', got {self.compression!r}")

    def topic(self, name: str) -> str:
        return name if name.startswith("/") else "/" + name


def camera_key(topic: str) -> str:
    """HDF5 key of a camera topic: its last name component."""
    return topic.rstrip("/").rsplit("/", 1)[-1]


def hold_action(action_space: str, last: np.ndarray | None, action_dim: int) -> np.ndarray:
    """The action a robot executes when nothing is due: zero motion with the gripper (last value) kept for the
    relative spaces, the last action for absolute ones (``joint_position``, ``point_2d``, others)."""
    if last is None:
        out = np.zeros(action_dim, np.float32)
        if action_space == "calvin_rel_ee":
            out[-1] = 1.0  # gripper open, the bridge's initial state
        return out
    if action_space in RELATIVE_ACTION_SPACES:
        out = np.zeros_like(last)
        out[-1] = last[-1]
        return out
    return last.copy()


def _stamp(header) -> float:
    return float(header.stamp.sec) + 1e-9 * float(header.stamp.nanosec)


@dataclass
class _Recording:
    states: list[tuple[int, float, np.ndarray, np.ndarray | None]] = field(default_factory=list)  # log, stamp, p, s
    frames: dict[str, tuple[list[float], list[np.ndarray]]] = field(default_factory=dict)
    chunks: list[dict] = field(default_factory=list)
    events: list[tuple[float, str]] = field(default_factory=list)
    guidance: list[tuple[float, bool, int]] = field(default_factory=list)


def read_recording(path: str | Path, cfg: FromMcapConfig) -> _Recording:
    """Decode the topics ``cfg`` needs from an MCAP file (log-time order)."""
    from mcap.exceptions import McapError
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory

    from dynaguide.chunk_execution import chunk_from_flat

    path = Path(path)
    if not path.is_file():
        raise RecordingError(f"recording {path} does not exist")
    with open(path, "rb") as f:
        magic = f.read(len(MCAP_MAGIC))
    if magic != MCAP_MAGIC:
        raise RecordingError(f"{path} is not a readable MCAP file (it does not start with the MCAP magic bytes): "
                             "give a recording written by `dynaguide record`")
    state_topic = cfg.topic(cfg.state_topic or PROPRIO_SOURCES[cfg.proprio])
    cams = {cfg.topic(c): camera_key(c) for c in cfg.cameras}
    if len(set(cams.values())) != len(cams):
        raise RecordingError(f"camera topics {cfg.cameras} end in the same name: their HDF5 keys would collide")
    wanted = {state_topic, cfg.topic(cfg.chunk_topic), cfg.topic(cfg.behaviour_topic), cfg.topic(cfg.guidance_topic),
              *cams}
    rec = _Recording(frames={k: ([], []) for k in cams.values()})
    with open(path, "rb") as f:
        try:
            reader = make_reader(f, decoder_factories=[DecoderFactory()])
            summary = reader.get_summary()
            present = {c.topic for c in summary.channels.values()} if summary is not None else None
            if present is not None:
                missing = sorted({state_topic, cfg.topic(cfg.chunk_topic), *cams} - present)
                if missing:
                    raise RecordingError(f"{path} has no {missing} (topics in it: {sorted(present)})")
            from dynaguide.image_msgs import rgb_from_image_msg

            for _schema, channel, message, msg in reader.iter_decoded_messages(topics=sorted(wanted)):
                topic = channel.topic
                if topic == state_topic:
                    if cfg.proprio == "calvin_state":
                        proprio = np.asarray(msg.robot_obs, np.float32)
                        scene = np.asarray(msg.scene_obs, np.float32)
                    else:
                        proprio, scene = np.asarray(msg.position, np.float32), None
                    rec.states.append((message.log_time, _stamp(msg.header), proprio, scene))
                elif topic in cams:
                    stamps, images = rec.frames[cams[topic]]
                    stamps.append(_stamp(msg.header))
                    images.append(rgb_from_image_msg(msg))
                elif topic == cfg.topic(cfg.chunk_topic):
                    actions = chunk_from_flat(np.asarray(msg.actions, np.float32), msg.horizon, msg.action_dim,
                                              dtype=np.float32)
                    rec.chunks.append({"log_time": message.log_time, "stamp": _stamp(msg.header), "actions": actions,
                                       "dt": float(msg.dt), "start_index": int(msg.start_index),
                                       # recordings made before the field existed: nothing frozen
                                       "frozen_steps": int(getattr(msg, "frozen_steps", 0)),
                                       "guided": bool(msg.guided), "action_space": str(msg.action_space)})
                elif topic == cfg.topic(cfg.behaviour_topic):
                    rec.events.append((_stamp(msg.header), str(msg.behaviour)))
                elif topic == cfg.topic(cfg.guidance_topic):
                    rec.guidance.append((_stamp(msg.header), bool(msg.active), int(msg.revision)))
        except (McapError, struct.error, EOFError, UnicodeDecodeError) as exc:  # damaged or truncated records
            raise RecordingError(f"{path} is not a readable MCAP file: {type(exc).__name__}: {exc}") from exc
    if not rec.states:
        raise RecordingError(f"{path} has no messages on {state_topic}")
    if not rec.chunks:
        raise RecordingError(f"{path} has no action chunks on {cfg.topic(cfg.chunk_topic)}: nothing was executed")
    for key, (stamps, _) in rec.frames.items():
        if not stamps:
            raise RecordingError(f"{path} has no frames of camera {key!r}")
    return rec


@dataclass
class Steps:
    """Per control step: ``stamps (K,)`` s, ``proprio (K, P)``, ``scene (K, S) | None``, ``actions (K, A)``,
    ``held (K,) bool``, ``guided (K,) bool``, ``source (K,) int`` (index of the chunk the action came from,
    -1 = held), ``frame_index {camera: (K,) int}`` (-1 = no usable frame)."""

    stamps: np.ndarray
    proprio: np.ndarray
    scene: np.ndarray | None
    actions: np.ndarray
    held: np.ndarray
    guided: np.ndarray
    source: np.ndarray
    frame_index: dict[str, np.ndarray]
    dt: float
    action_space: str
    rejected_chunks: int = 0


def reconstruct_steps(rec: _Recording, cfg: FromMcapConfig) -> Steps:
    """Control steps from the robot states, and the action executed at each by replaying the chunks through
    :class:`~dynaguide.chunk_execution.ActionSchedule` (module docstring)."""
    from dynaguide.chunk_execution import ActionSchedule

    # one step per distinct stamp (first message of each)
    steps: list[tuple[int, float, np.ndarray, np.ndarray | None]] = []
    for s in rec.states:
        if not steps or s[1] > steps[-1][1] + 1e-9:
            steps.append(s)
        elif s[1] < steps[-1][1] - 1e-9:
            raise RecordingError(f"robot state stamps go backwards ({steps[-1][1]:.6f} → {s[1]:.6f}): "
                                 "was the sim restarted during the recording? record one run per file")
    stamps = np.array([s[1] for s in steps])
    dims = {c["actions"].shape[1] for c in rec.chunks}
    spaces = {c["action_space"] for c in rec.chunks}
    dts = {round(c["dt"], 9) for c in rec.chunks}
    if len(dims) != 1 or len(spaces) != 1 or len(dts) != 1:
        raise RecordingError(f"chunks disagree on action_dim {sorted(dims)}, action_space {sorted(spaces)} or dt "
                             f"{sorted(dts)}: one policy per recording")
    action_dim, action_space, dt = dims.pop(), spaces.pop(), float(dts.pop())
    # the executor's clock when each chunk arrived: the stamp of the last state received before it
    state_logs = [s[0] for s in rec.states]
    events: list[tuple[float, int, int]] = []
    for ci, c in enumerate(rec.chunks):
        j = bisect_right(state_logs, c["log_time"]) - 1
        arrival = max(c["stamp"], rec.states[j][1]) if j >= 0 else c["stamp"]
        events.append((arrival, 0, ci))
    events += [(float(t), 1, k) for k, t in enumerate(stamps)]
    events.sort()
    schedule = ActionSchedule(action_dim + 1, dt, max_future_s=1e9)  # arrival >= stamp by construction
    actions = np.zeros((len(stamps), action_dim), np.float32)
    held = np.ones(len(stamps), bool)
    source = np.full(len(stamps), -1)
    rejected = 0
    last = None
    for when, kind, index in events:
        if kind == 0:
            c = rec.chunks[index]
            tagged = np.concatenate([c["actions"], np.full((len(c["actions"]), 1), index, np.float32)], axis=1)
            try:
                schedule.add_chunk(tagged, c["stamp"], c["dt"], c["start_index"], now=when,
                                   frozen_steps=c.get("frozen_steps", 0))
            except ValueError:
                rejected += 1  # out of order or malformed: the executor rejected it too
            continue
        due = schedule.next_action(float(stamps[index]) + dt)
        if due is None:
            actions[index] = hold_action(action_space, last, action_dim)
        else:
            actions[index] = due[:action_dim]
            last = actions[index].copy()
            held[index] = False
            source[index] = int(round(due[action_dim]))
    guided = np.array([s >= 0 and rec.chunks[s]["guided"] for s in source], bool)
    frame_index: dict[str, np.ndarray] = {}
    for cam, (fstamps, _) in rec.frames.items():
        order = np.asarray(fstamps)
        if np.any(np.diff(order) < -1e-9):
            raise RecordingError(f"frame stamps of camera {cam!r} go backwards: record one run per file")
        idx = np.searchsorted(order, stamps + 1e-6, side="right") - 1
        ok = (idx >= 0) & (stamps - order[np.maximum(idx, 0)] <= cfg.max_image_age_s)
        frame_index[cam] = np.where(ok, idx, -1)
    scene = np.stack([s[3] for s in steps]) if steps[0][3] is not None else None
    proprio_dims = {len(s[2]) for s in steps}
    if len(proprio_dims) != 1:
        raise RecordingError(f"robot state vectors change length during the recording: {sorted(proprio_dims)}")
    return Steps(stamps=stamps, proprio=np.stack([s[2] for s in steps]), scene=scene, actions=actions, held=held,
                 guided=guided, source=source, frame_index=frame_index, dt=dt, action_space=action_space,
                 rejected_chunks=rejected)


def valid_runs(steps: Steps) -> list[tuple[int, int]]:
    """Maximal ``[start, end)`` step ranges with a frame for every camera, from the first executed action to
    the last (held steps in between are kept: the robot did hold)."""
    executed = np.flatnonzero(~steps.held)
    if len(executed) == 0:
        return []
    ok = np.ones(len(steps.stamps), bool)
    for idx in steps.frame_index.values():
        ok &= idx >= 0
    ok[: executed[0]] = False
    ok[executed[-1] + 1:] = False
    runs, start = [], None
    for k, good in enumerate(ok):
        if good and start is None:
            start = k
        elif not good and start is not None:
            runs.append((start, k))
            start = None
    if start is not None:
        runs.append((start, len(ok)))
    return runs


def segment_ranges(steps: Steps, events: list[tuple[float, str]], cfg: FromMcapConfig
                   ) -> list[tuple[int, int, str | None]]:
    """``(start, end, behaviour or None)`` step ranges (end exclusive) by ``cfg.segment`` (module docstring)."""
    out: list[tuple[int, int, str | None]] = []
    runs = valid_runs(steps)
    event_steps = [(int(np.searchsorted(steps.stamps, t - 1e-6)), b) for t, b in events]
    if cfg.segment == "window":
        from dynaguide.datasets_external import window_segments

        for lo, hi in runs:
            for s, e in ((lo + a, lo + b) for a, b in window_segments(hi - lo, cfg.window, cfg.stride)):
                inside = [b for k, b in event_steps if s <= k < e]
                out.append((s, e, inside[-1] if inside else None))
        return out
    for lo, hi in runs:
        prev = lo
        for k, behaviour in event_steps:
            if not lo <= k < hi:
                continue
            start = prev if not cfg.window else max(prev, k + 1 - cfg.window)
            if k + 1 - start >= cfg.min_length:
                out.append((start, k + 1, behaviour))
            prev = k + 1
    return [r for r in out if r[1] - r[0] >= cfg.min_length]


def convert_mcap(path: str | Path, out: str | Path, cfg: FromMcapConfig | None = None, overwrite: bool = False
                 ) -> dict:
    """Write the segments of recording ``path`` to the HDF5 file ``out``; returns a summary dict
    (``segments``, ``steps``, ``held_steps``, ``rejected_chunks``, ``behaviours``, ``out``).

    ``out`` is never the recording itself, and an existing ``out`` is replaced only with ``overwrite``
    (:class:`~dynaguide.inputs.InputError` otherwise, before anything is read).  The file is written to a temp
    file next to ``out`` and renamed when complete; an error, Ctrl-C or SIGTERM removes the temp file."""
    import h5py

    from dynaguide.data.schema import Demo
    from dynaguide.data.writer import write_demo
    from dynaguide.inputs import atomic_output, refuse_overwrite

    cfg = cfg or FromMcapConfig()
    out = refuse_overwrite(out, inputs=[path], overwrite=overwrite)
    rec = read_recording(path, cfg)
    steps = reconstruct_steps(rec, cfg)
    ranges = segment_ranges(steps, rec.events, cfg)
    if not ranges:
        runs = valid_runs(steps)
        longest = max((b - a for a, b in runs), default=0)
        inside = sum(any(a <= int(np.searchsorted(steps.stamps, t - 1e-6)) < b for a, b in runs) for t, _ in rec.events)
        raise RecordingError(f"no segment fits: {len(steps.stamps)} steps, longest usable run {longest} steps, "
                             f"{len(rec.events)} behaviour events ({inside} inside usable runs: steps with a frame "
                             f"and a recorded action); segment={cfg.segment!r} window={cfg.window} "
                             f"min_length={cfg.min_length} (record longer or use a smaller --window)")
    for cam, (_, images) in rec.frames.items():
        shapes = {im.shape for im in images}
        if len(shapes) != 1:
            raise RecordingError(f"camera {cam!r} changes image size during the recording: {sorted(shapes)}")
    behaviours: dict[str, int] = {}
    with atomic_output(out) as tmp, h5py.File(tmp, "w") as f:
        data = f.create_group("data")
        data.attrs.update({"source": str(Path(path).resolve()), "source_format": "mcap (dynaguide record)",
                           "action_space": steps.action_space, "control_dt": steps.dt,
                           "conversion": json.dumps(asdict(cfg))})
        for i, (s, e, behaviour) in enumerate(ranges):
            images = {cam: np.stack([rec.frames[cam][1][j] for j in steps.frame_index[cam][s:e]])
                      for cam in rec.frames}
            demo = Demo(actions=steps.actions[s:e], images=images, proprio=steps.proprio[s:e],
                        states=None if steps.scene is None else steps.scene[s:e], behaviour=behaviour)
            write_demo(data, demo, f"demo_{i}", attrs={
                "t_start": float(steps.stamps[s]), "t_end": float(steps.stamps[e - 1]),
                "guided_fraction": float(steps.guided[s:e].mean()), "held_steps": int(steps.held[s:e].sum()),
                "source": str(Path(path).name)},
                compression=None if cfg.compression == "none" else cfg.compression, compression_opts=1)
            if behaviour:
                behaviours[behaviour] = behaviours.get(behaviour, 0) + 1
    used = sorted({k for s, e, _ in ranges for k in range(s, e)})
    return {"out": str(out), "segments": len(ranges), "steps": len(steps.stamps), "steps_used": len(used),
            "held_steps": int(steps.held[used].sum()), "chunks": len(rec.chunks),
            "rejected_chunks": steps.rejected_chunks, "behaviour_events": len(rec.events), "behaviours": behaviours,
            "action_space": steps.action_space, "control_dt": steps.dt}
