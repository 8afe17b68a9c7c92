"""``dynaguide view`` — watch a running graph (or a ``dynaguide record`` file) in rerun: cameras, the end-effector
path and each chunk's planned path in 3-D, the goal images in force, the guidance signal, behaviour events and
compute time against the budget (what is shown: :mod:`dynaguide_ros.rerun_sink`).

Where it goes (any combination; the native viewer when none is given):

* the native rerun viewer, started here (``python -m rerun``, its gRPC server bound to 127.0.0.1);
* ``--web``: rerun's web viewer served on localhost (``http://127.0.0.1:<web-port>``, the data from a gRPC server
  on 127.0.0.1 too) until Ctrl-C, so the run can still be browsed after it ends;
* ``--save run.rrd``: a rerun file (``rerun run.rrd`` opens it).

``dynaguide view`` subscribes to the graph (localhost-only discovery, as every process of the stack) until
``--duration`` seconds have passed or Ctrl-C; ``dynaguide view REC.mcap`` replays a recording the same way, on
the recording's own stamps.  rerun is the optional ``view`` extra: ``pip install 'dynaguide-stack[view]'``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from dynaguide.inputs import InputError

APP_ID = "dynaguide"
GRPC_PORT = 9876
WEB_PORT = 9090
LOCALHOST = "127.0.0.1"

SENSOR_TOPICS = ("camera/rgb_static", "camera/rgb_gripper")
LATCHED_TOPICS = ("guidance/state", "guidance/goal_images")
RELIABLE_TOPICS = ("calvin/state", "calvin/behaviour", "policy/predicted_path", "policy/diagnostics",
                   "policy/guidance_signal", "ee_pose")
TOPIC_TYPES = {
    "camera/rgb_static": ("sensor_msgs.msg", "Image"), "camera/rgb_gripper": ("sensor_msgs.msg", "Image"),
    "guidance/goal_images": ("sensor_msgs.msg", "Image"),
    "guidance/state": ("dynaguide_msgs.msg", "GuidanceState"),
    "calvin/state": ("dynaguide_msgs.msg", "CalvinState"),
    "calvin/behaviour": ("dynaguide_msgs.msg", "BehaviourEvent"),
    "policy/predicted_path": ("visualization_msgs.msg", "MarkerArray"),
    "policy/diagnostics": ("dynaguide_msgs.msg", "PolicyDiagnostics"),
    "policy/guidance_signal": ("diagnostic_msgs.msg", "DiagnosticArray"),
    "ee_pose": ("geometry_msgs.msg", "PoseStamped"),
}
"""What the viewer subscribes to, and the message type of each topic."""


@dataclass
class ViewOutputs:
    """Where the stream goes: ``native`` viewer, ``web`` viewer on localhost, ``save`` path (``""`` = none)."""

    native: bool = False
    web: bool = False
    save: str = ""
    grpc_port: int = GRPC_PORT
    web_port: int = WEB_PORT

    def __post_init__(self) -> None:
        if not (self.native or self.web or self.save):
            self.native = True


def import_rerun():
    """``rerun``, or :class:`InputError` saying how to install it."""
    try:
        import rerun
    except ImportError as exc:
        raise InputError("rerun is not installed: pip install 'dynaguide-stack[view]' (or pip install rerun-sdk)"
                         ) from exc
    return rerun


class ViewerProcesses:
    """The rerun viewer/server processes this command started (stopped by :meth:`close`, except the native
    viewer's window, which stays open for the user)."""

    def __init__(self) -> None:
        self.web: subprocess.Popen | None = None
        self.native: subprocess.Popen | None = None
        self.web_url = ""
        self.started = False

    def start(self, outputs: ViewOutputs) -> None:
        """Start the viewer processes ``outputs`` asks for (once; later calls do nothing)."""
        if self.started:
            return
        self.started = True
        rerun_cmd = [sys.executable, "-m", "rerun", "--bind", LOCALHOST]
        if outputs.web:
            self.web = subprocess.Popen(rerun_cmd + ["--serve-web", "--port", str(outputs.grpc_port),
                                                     "--web-viewer-port", str(outputs.web_port)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
            self.web_url = f"http://{LOCALHOST}:{outputs.web_port}/?url={_grpc_url(outputs.grpc_port)}"
            self._wait_started(self.web, "the rerun web viewer", outputs.grpc_port)
        if outputs.native:
            port = _native_port(outputs)
            self.native = subprocess.Popen(rerun_cmd + ["--port", str(port)], stdout=subprocess.DEVNULL,
                                           stderr=subprocess.PIPE, start_new_session=True)
            self._wait_started(self.native, "the native rerun viewer (no display? use --web or --save)", port)

    def sinks(self, outputs: ViewOutputs, save: str) -> list:
        """rerun sinks of one recording: the started viewers, and the file ``save`` (``""``: none)."""
        rr = import_rerun()
        sinks = []
        if save:
            sinks.append(rr.FileSink(str(check_save_path(save))))
        if self.web is not None:
            sinks.append(rr.GrpcSink(_grpc_url(outputs.grpc_port)))
        if self.native is not None:
            sinks.append(rr.GrpcSink(_grpc_url(_native_port(outputs))))
        return sinks

    @staticmethod
    def _wait_started(proc: subprocess.Popen, what: str, port: int, timeout: float = 20.0) -> None:
        import socket

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                err = (proc.stderr.read() or b"").decode(errors="replace").strip().splitlines()
                raise InputError(f"{what} exited at start ({proc.returncode}): {err[-1] if err else 'no output'}")
            with socket.socket() as s:
                if s.connect_ex((LOCALHOST, port)) == 0:
                    return
            time.sleep(0.2)
        raise InputError(f"{what} did not listen on {LOCALHOST}:{port} within {timeout:g} s")

    def close(self) -> None:
        if self.web is not None and self.web.poll() is None:
            os.killpg(self.web.pid, signal.SIGTERM)
            try:
                self.web.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.web.pid, signal.SIGKILL)
                self.web.wait()


def check_save_path(save: str) -> Path | None:
    """``--save``'s path, or :class:`InputError` unless it is a ``.rrd`` name in an existing directory."""
    if not save:
        return None
    path = Path(save).expanduser()
    if path.suffix != ".rrd":
        raise InputError(f"--save {save}: give a .rrd file name")
    if not path.parent.is_dir():
        raise InputError(f"--save {save}: directory {path.parent} does not exist")
    return path


def _grpc_url(port: int) -> str:
    return f"rerun+http://{LOCALHOST}:{port}/proxy"


def _native_port(outputs: ViewOutputs) -> int:
    return outputs.grpc_port + (1 if outputs.web else 0)


def open_stream(outputs: ViewOutputs, processes: ViewerProcesses, name: str, save: str | None = None):
    """A new rerun recording (application ``dynaguide``, recording name ``name``) streaming to ``outputs``'s
    viewers (started on the first call) and to ``save`` (default ``outputs.save``)."""
    rr = import_rerun()
    save = outputs.save if save is None else save
    check_save_path(save)          # before any process starts
    processes.start(outputs)
    sinks = processes.sinks(outputs, save)
    rec = rr.RecordingStream(APP_ID)
    rec.set_sinks(*sinks)
    rec.send_recording_name(name)
    return rec


def attach(node, sink) -> list:
    """Subscribe ``node`` (rclpy) to :data:`TOPIC_TYPES`, each message logged through ``sink`` (a
    :class:`~dynaguide_ros.rerun_sink.RerunSink`).  Returns the subscriptions."""
    import importlib

    from dynaguide_ros.qos import LATCHED, RELIABLE, SENSOR

    subs = []
    for topic, (module, name) in TOPIC_TYPES.items():
        qos = SENSOR if topic in SENSOR_TOPICS else LATCHED if topic in LATCHED_TOPICS else RELIABLE
        msg_type = getattr(importlib.import_module(module), name)
        subs.append(node.create_subscription(msg_type, topic, lambda m, t=topic: sink.log(t, m), qos))
    return subs


def replay_mcap(path: str | Path, sink) -> dict[str, int]:
    """Feed the viewer's topics of an MCAP recording to ``sink`` in log-time order; messages per topic shown.
    A file that is not a readable MCAP recording raises :class:`InputError` (one line)."""
    from mcap.exceptions import McapError
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory

    from dynaguide.recordings import MCAP_MAGIC

    path = Path(path)
    if not path.is_file():
        raise InputError(f"view {path}: no such file")
    with open(path, "rb") as f:
        if f.read(len(MCAP_MAGIC)) != MCAP_MAGIC:
            raise InputError(f"view {path}: not an MCAP file (give a recording written by `dynaguide record`)")
    with open(path, "rb") as f:
        try:
            reader = make_reader(f, decoder_factories=[DecoderFactory()])
            summary = reader.get_summary()
            present = {c.topic for c in summary.channels.values()} if summary is not None else set()
            wanted = sorted(t for t in present if t.lstrip("/") in TOPIC_TYPES)
            if not wanted:
                raise InputError(f"view {path}: none of the viewer's topics is in it (it has {sorted(present)})")
            for _schema, channel, _message, msg in reader.iter_decoded_messages(topics=wanted, log_time_order=True):
                sink.log(channel.topic, msg)
        except (McapError, EOFError) as exc:
            raise InputError(f"view {path}: unreadable MCAP ({exc})") from exc
    return dict(sink.counts)


def _live(args, rec, sink) -> None:
    from dynaguide_ros.ros_env import apply_localhost_defaults

    apply_localhost_defaults()
    import rclpy

    rclpy.init()
    node = rclpy.create_node("dynaguide_view")
    try:
        attach(node, sink)
        until = "until Ctrl-C" if not args.duration else f"{args.duration:g} s"
        print(f"[view] streaming the graph to rerun ({until})", flush=True)
        start, last = time.monotonic(), time.monotonic()
        while rclpy.ok() and (not args.duration or time.monotonic() - start < args.duration):
            rclpy.spin_once(node, timeout_sec=0.1)
            if time.monotonic() - last >= 10.0:
                last = time.monotonic()
                print(f"[view] {sum(sink.counts.values())} messages shown "
                      f"({', '.join(f'{t} {n}' for t, n in sorted(sink.counts.items())) or 'none yet'})", flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


def run_view(args) -> int:
    """``dynaguide view`` with its parsed arguments (:mod:`dynaguide_cli.ros`)."""
    from dynaguide_ros.rerun_sink import RerunSink

    outputs = ViewOutputs(native=args.native, web=args.web, save=args.save or "",
                          grpc_port=args.grpc_port, web_port=args.web_port)
    if args.recording and not Path(args.recording).is_file():
        raise InputError(f"view {args.recording}: no such file")
    processes = ViewerProcesses()

    def _stop(_signum, _frame):
        raise KeyboardInterrupt   # SIGTERM ends the view like Ctrl-C: files finalised, servers stopped
    signal.signal(signal.SIGTERM, _stop)
    # Ctrl-C also where SIGINT came ignored (a background job of a script or CI): else the servers outlive the view
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        name = Path(args.recording).name if args.recording else "live graph"
        rec = open_stream(outputs, processes, name)
        if processes.web_url:
            print(f"[view] web viewer: {processes.web_url}", flush=True)
        sink = RerunSink(rec)
        if args.recording:
            counts = replay_mcap(args.recording, sink)
            print(f"[view] replayed {args.recording}: {counts}", flush=True)
        else:
            _live(args, rec, sink)
        rec.flush()
        if outputs.save:
            rec.disconnect()   # finalises the file (footer)
            print(f"[view] wrote {outputs.save}", flush=True)
        if outputs.web:
            print(f"[view] the web viewer stays up at {processes.web_url} until Ctrl-C", flush=True)
            try:
                while processes.web.poll() is None:
                    time.sleep(0.5)
            except KeyboardInterrupt:
                pass
    finally:
        processes.close()
    return 0
