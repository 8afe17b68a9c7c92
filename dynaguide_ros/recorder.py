"""``dynaguide record`` — record topics of the ROS graph to an MCAP file that ``ros2 bag`` and Foxglove read.

rosbag2 is not on PyPI; this is a small rclpy recorder writing the same file layout as rosbag2's mcap storage
plugin (the ``ros2`` MCAP profile), with the PyPI ``mcap`` writer:

* header profile ``ros2``; one channel per topic (fully qualified name, e.g. ``/camera/rgb_static``),
  ``message_encoding = "cdr"``, channel metadata ``offered_qos_profiles`` (YAML of the publishers' QoS, as
  rosbag2 writes it) and ``topic_type_hash`` (the type's RIHS01 hash, when the middleware reports one);
* one schema per type: ``name = "pkg/msg/Type"``, ``encoding = "ros2msg"``, data = the complete concatenated
  ``.msg`` definition (:func:`dynaguide_ros.msgdefs.message_definition`);
* each message record holds the message's CDR bytes exactly as the middleware delivered them (a raw
  subscription: the bytes ``rclpy.serialization.serialize_message`` would produce, without a deserialise /
  serialise round trip), ``log_time`` = receive time and ``publish_time`` = the publisher's source time
  (system clock, ns since the epoch, as rosbag2 does without ``--use-sim-time``); message header stamps
  (simulated time in the lockstep sim graph) stay inside the messages;
* chunks compressed with zstd (or lz4 / none), with the summary section (statistics, chunk and message
  indexes) written when the recording stops: ``ros2 bag info -s mcap REC.mcap``, ``ros2 bag play`` and
  Foxglove open the file directly.

Subscriptions follow rosbag2's QoS adaptation: a topic is subscribed once a publisher is seen (checked every
``discovery_period_s``), best effort if any publisher is best effort, transient local if all are (so the
latched ``guidance/state`` is recorded from its last message).  A topic's type comes from ``--topic
NAME:pkg/msg/Type``, the table of the stack's topics (:data:`KNOWN_TYPES`), or the graph.

Stopping: ``--duration`` (seconds of wall-clock recording, 0 = none), ``--max-bytes`` (recorded message
bytes before compression, 0 = none), Ctrl-C or SIGTERM.  Every stop finalises the file (summary, footer)
before the process exits; a summary JSON line (messages per topic, bytes, seconds, why it stopped) is printed.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from dynaguide.inputs import one_line

DEFAULT_TOPICS: tuple[str, ...] = ("camera/rgb_static", "calvin/state", "joint_states", "action_chunk",
                                   "calvin/behaviour", "guidance/state", "policy/predicted_path",
                                   "policy/diagnostics", "policy/guidance_signal", "camera/rgb_gripper")
"""What ``dynaguide record`` records by default: what ``dynaguide dataset from-mcap`` needs from the sim graph,
and the policy's plan (``policy/predicted_path``) and per-chunk diagnostics, so a recording shows what it meant."""

KNOWN_TYPES: dict[str, str] = {
    "camera/rgb_static": "sensor_msgs/msg/Image",
    "camera/rgb_gripper": "sensor_msgs/msg/Image",
    "camera/rgb": "sensor_msgs/msg/Image",
    "joint_states": "sensor_msgs/msg/JointState",
    "calvin/state": "dynaguide_msgs/msg/CalvinState",
    "calvin/behaviour": "dynaguide_msgs/msg/BehaviourEvent",
    "action_chunk": "dynaguide_msgs/msg/ActionChunk",
    "guidance/state": "dynaguide_msgs/msg/GuidanceState",
    "policy/diagnostics": "dynaguide_msgs/msg/PolicyDiagnostics",
    "policy/predicted_path": "visualization_msgs/msg/MarkerArray",
    "policy/guidance_signal": "diagnostic_msgs/msg/DiagnosticArray",
    "ee_pose": "geometry_msgs/msg/PoseStamped",
}
"""Types of the stack's topics (relative names); other topics need ``NAME:TYPE`` or a publisher to ask."""

COMPRESSIONS = ("zstd", "lz4", "none")


@dataclass
class RecorderConfig:
    """What and how to record.

    Attributes:
        out: the ``.mcap`` file written (its directory is created).
        topics: topic names, each optionally ``NAME:pkg/msg/Type``; relative names resolve in the node's
            namespace (the root by default).
        max_duration_s: stop after this many seconds of wall-clock time (0 = no limit).
        max_bytes: stop once this many message bytes (CDR, before compression) are recorded (0 = no limit).
        compression: chunk compression, ``zstd``, ``lz4`` or ``none``.
        chunk_size: bytes of messages per MCAP chunk (before compression).
        discovery_period_s: how often topics without a subscription look for publishers (s).
        overwrite: replace an existing ``out``; otherwise an existing file is an error.
    """

    out: str = "recording.mcap"
    topics: tuple[str, ...] = DEFAULT_TOPICS
    max_duration_s: float = 0.0
    max_bytes: int = 0
    compression: str = "zstd"
    chunk_size: int = 1 << 20
    discovery_period_s: float = 0.5
    overwrite: bool = False

    def __post_init__(self) -> None:
        self.topics = tuple(self.topics)
        if not self.topics:
            raise ValueError("give at least one topic to record")
        if self.compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {COMPRESSIONS}, got {self.compression!r}")
        if not (self.max_duration_s >= 0 and self.max_bytes >= 0):
            raise ValueError("max_duration_s and max_bytes must be >= 0 (0 = no limit)")
        if self.chunk_size <= 0 or not self.discovery_period_s > 0:
            raise ValueError("chunk_size and discovery_period_s must be positive")
        if not str(self.out).endswith(".mcap"):
            raise ValueError(f"the output file must end in .mcap, got {self.out!r}")


def parse_topic(spec: str) -> tuple[str, str | None]:
    """``"NAME"`` or ``"NAME:pkg/msg/Type"`` → ``(name, type or None)``."""
    from dynaguide_ros.msgdefs import normalize_type

    name, sep, type_name = spec.partition(":")
    name = name.strip()
    if not name:
        raise ValueError(f"empty topic name in {spec!r}")
    return name, (normalize_type(type_name) if sep else None)


def _message_class(type_name: str):
    import importlib

    pkg, _, name = type_name.split("/")
    try:
        return getattr(importlib.import_module(f"{pkg}.msg"), name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"message type {type_name} is not importable here ({exc}); install its package") from exc


def _adapted_qos(publisher_qos: list):
    """rosbag2's rule: best effort if any publisher is, transient local if all publishers are; keep last 100."""
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    best_effort = any(q.reliability == ReliabilityPolicy.BEST_EFFORT for q in publisher_qos)
    latched = bool(publisher_qos) and all(q.durability == DurabilityPolicy.TRANSIENT_LOCAL for q in publisher_qos)
    return QoSProfile(depth=100, history=HistoryPolicy.KEEP_LAST,
                      reliability=ReliabilityPolicy.BEST_EFFORT if best_effort else ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE)


@dataclass
class _Topic:
    name: str                      # fully qualified
    type_name: str | None
    channel_id: int | None = None
    subscription: object | None = None
    count: int = 0
    nbytes: int = 0


@dataclass
class RecordingStats:
    """What a recording holds: per-topic message counts and CDR bytes, seconds recorded, why it stopped."""

    out: str
    messages: dict[str, int] = field(default_factory=dict)
    bytes: int = 0
    seconds: float = 0.0
    stop_reason: str = ""


class McapTopicWriter:
    """The MCAP side of the recorder (no rclpy): schemas, channels and CDR messages in the ``ros2`` profile."""

    def __init__(self, path: str | Path, compression: str = "zstd", chunk_size: int = 1 << 20) -> None:
        from mcap.writer import CompressionType, Writer

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._stream = open(self.path, "wb")
        kind = {"zstd": CompressionType.ZSTD, "lz4": CompressionType.LZ4, "none": CompressionType.NONE}[compression]
        self._writer = Writer(self._stream, chunk_size=chunk_size, compression=kind)
        self._writer.start(profile="ros2", library="dynaguide record (python mcap)")
        self._schemas: dict[str, int] = {}
        self._sequence = 0
        self.finished = False

    def add_channel(self, topic: str, type_name: str, qos_yaml: str, type_hash: str = "") -> int:
        """Register ``topic`` (``type_name`` = ``pkg/msg/Type``) and return its channel id."""
        from dynaguide_ros.msgdefs import message_definition

        if type_name not in self._schemas:
            self._schemas[type_name] = self._writer.register_schema(
                name=type_name, encoding="ros2msg", data=message_definition(type_name).encode())
        metadata = {"offered_qos_profiles": qos_yaml}
        if type_hash:
            metadata["topic_type_hash"] = type_hash
        return self._writer.register_channel(topic=topic, message_encoding="cdr",
                                             schema_id=self._schemas[type_name], metadata=metadata)

    def write(self, channel_id: int, cdr: bytes, log_time_ns: int, publish_time_ns: int) -> None:
        """One message: ``cdr`` = the serialized message (CDR with its 4-byte encapsulation header)."""
        self._writer.add_message(channel_id=channel_id, log_time=int(log_time_ns), data=bytes(cdr),
                                 publish_time=int(publish_time_ns), sequence=self._sequence)
        self._sequence += 1

    def finish(self) -> None:
        """Write the summary section and footer and close the file (idempotent)."""
        if not self.finished:
            self.finished = True
            try:
                self._writer.finish()
            finally:
                self._stream.close()


def make_recorder_node(cfg: RecorderConfig):
    """Create the rclpy recorder node (``rclpy.init`` must have run); see the module docstring."""
    from rclpy.node import Node

    class McapRecorderNode(Node):
        def __init__(self) -> None:
            super().__init__("dynaguide_recorder")
            self.cfg = cfg
            out = Path(cfg.out)
            if out.exists() and not cfg.overwrite:
                raise FileExistsError(f"{out} exists (pass --overwrite to replace it)")
            self.topics: dict[str, _Topic] = {}
            for spec in cfg.topics:
                name, type_name = parse_topic(spec)
                fqn = self.resolve_topic_name(name)
                type_name = type_name or KNOWN_TYPES.get(fqn.lstrip("/"))
                if type_name is not None:
                    _message_class(type_name)  # fail now, with the reason, not at the first publisher
                self.topics[fqn] = _Topic(fqn, type_name)
            self.writer = McapTopicWriter(out, cfg.compression, cfg.chunk_size)
            self.bytes = 0
            self.started = time.monotonic()
            self.stop_reason = ""
            self.create_timer(cfg.discovery_period_s, self._discover)
            self.create_timer(0.1, self._check_time)
            self._discover()
            self.get_logger().info(f"recording {sorted(self.topics)} to {out}")

        def _discover(self) -> None:
            for topic in self.topics.values():
                if topic.subscription is not None:
                    continue
                infos = self.get_publishers_info_by_topic(topic.name)
                if not infos:
                    continue
                if topic.type_name is None:
                    topic.type_name = infos[0].topic_type
                wanted = topic.type_name
                infos = [i for i in infos if i.topic_type == wanted]
                if not infos:
                    continue
                from dynaguide_ros.msgdefs import qos_profiles_yaml

                type_hash = str(getattr(infos[0], "topic_type_hash", "") or "")
                topic.channel_id = self.writer.add_channel(topic.name, wanted, qos_profiles_yaml(
                    [i.qos_profile for i in infos]), type_hash if type_hash.startswith("RIHS") else "")

                def on_message(data: bytes, info, t: _Topic = topic) -> None:
                    self._record(t, data, info)

                topic.subscription = self.create_subscription(
                    _message_class(wanted), topic.name, on_message, _adapted_qos([i.qos_profile for i in infos]),
                    raw=True)
                self.get_logger().info(f"subscribed to {topic.name} ({wanted})")

        def _record(self, topic: _Topic, data: bytes, info) -> None:
            if self.stop_reason or self.writer.finished:
                return
            received = int(info.get("received_timestamp") or time.time_ns()) if isinstance(info, dict) \
                else time.time_ns()
            source = int(info.get("source_timestamp") or received) if isinstance(info, dict) else received
            self.writer.write(topic.channel_id, data, received, source)
            topic.count += 1
            topic.nbytes += len(data)
            self.bytes += len(data)
            if cfg.max_bytes and self.bytes >= cfg.max_bytes:
                self.stop_reason = f"size limit ({cfg.max_bytes} bytes)"

        def _check_time(self) -> None:
            if cfg.max_duration_s and time.monotonic() - self.started >= cfg.max_duration_s:
                self.stop_reason = self.stop_reason or f"time limit ({cfg.max_duration_s:g} s)"

        def stats(self) -> RecordingStats:
            return RecordingStats(out=str(cfg.out), messages={t.name: t.count for t in self.topics.values()},
                                  bytes=self.bytes, seconds=round(time.monotonic() - self.started, 3),
                                  stop_reason=self.stop_reason)

        def destroy_node(self) -> None:
            self.writer.finish()
            super().destroy_node()

    return McapRecorderNode()


def record(cfg: RecorderConfig, ros_args: list[str] | None = None) -> RecordingStats:
    """Record until a limit is reached or SIGINT/SIGTERM arrives; the MCAP file is finalised in every case."""
    from dynaguide_ros.ros_env import apply_localhost_defaults

    apply_localhost_defaults()
    import signal

    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    # Our own SIGINT/SIGTERM handlers: rclpy's would shut the context down asynchronously, and whether the loop
    # then saw an exception or just a dead context decided what the stop reason said. A flag is deterministic.
    received: list[str] = []

    def _on_signal(signum, _frame) -> None:
        received.append(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    rclpy.init(args=["dynaguide", *(ros_args or [])], signal_handler_options=SignalHandlerOptions.NO)
    executor = SingleThreadedExecutor()
    node = None
    stats = RecordingStats(out=str(cfg.out))
    try:
        node = make_recorder_node(cfg)
        executor.add_node(node)
        while rclpy.ok() and not node.stop_reason and not received:
            executor.spin_once(timeout_sec=0.1)
        if received:
            node.stop_reason = node.stop_reason or f"interrupted ({received[0]})"
        elif not node.stop_reason:
            node.stop_reason = "shutdown"
    except (KeyboardInterrupt, ExternalShutdownException):
        if node is not None:
            node.stop_reason = node.stop_reason or "interrupted (SIGINT/SIGTERM)"
    finally:
        if node is not None:
            stats = node.stats()
            executor.remove_node(node)
            node.destroy_node()  # finalises the MCAP file
        executor.shutdown(timeout_sec=1.0)
        if rclpy.ok():
            rclpy.shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return stats


def run_record(args) -> int:
    """``dynaguide record`` with its parsed arguments (:mod:`dynaguide_cli.ros`)."""
    try:
        cfg = RecorderConfig(out=args.out, topics=tuple(args.topics or DEFAULT_TOPICS) + tuple(args.topic or ()),
                             max_duration_s=args.duration, max_bytes=int(args.max_bytes),
                             compression=args.compression, overwrite=args.overwrite)
        stats = record(cfg)
    except (ValueError, FileExistsError, LookupError) as exc:
        print(f"dynaguide: error: {one_line(exc)}", file=sys.stderr)
        return 2
    print(json.dumps({"recorded": stats.out, "stop_reason": stats.stop_reason, "seconds": stats.seconds,
                      "bytes": stats.bytes, "messages": stats.messages}), flush=True)
    return 0
