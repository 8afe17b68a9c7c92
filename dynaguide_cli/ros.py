"""The ROS 2 commands: ``dynaguide demo | launch | guide | reset | topic | node | interfaces | record | view``.

The argument parsers are here; what each command does is a function of :mod:`dynaguide_ros` (the demo, the
launcher, the guidance client, the recorder, the viewer, ...), imported when the command runs, so building the
command line imports neither rclpy nor torch.
"""

from __future__ import annotations

import argparse

from dynaguide_ros.graphs import GRAPHS, NODE_ENTRY_POINTS, UNTRAINED_OVERRIDES
from dynaguide_ros.guide_cli import DEFAULT_TIMEOUT_S, MAX_GOAL_SIDE
from dynaguide_ros.recorder import COMPRESSIONS, DEFAULT_TOPICS
from dynaguide_ros.ros_cli import DISCOVERY_S
from dynaguide_ros.viewer import GRPC_PORT, LOCALHOST, WEB_PORT

DEMO_DESCRIPTION = ("``dynaguide demo`` — the README's main job: the CALVIN sim graph, headless, guided and unguided "
                    "side by side.")
VIEW_DESCRIPTION = ("``dynaguide view`` — watch a running graph (or a ``dynaguide record`` file) in rerun: cameras, "
                    "the end-effector")


# ------------------------------------------------------------------------------------------ what the commands run
def _demo(args) -> int:
    from dynaguide_ros.demo import run_demo

    return run_demo(args)


def _launch(a) -> int:
    from dynaguide_ros.launcher import GraphLauncher, parse_overrides
    from dynaguide_ros.params import check_launch_arguments

    check_launch_arguments(a)  # the parameter files and --set overrides, before any node starts (ConfigError)
    overrides = parse_overrides(a.set)
    if a.untrained:
        for node, values in UNTRAINED_OVERRIDES.items():
            if any(n.name == node for n in GRAPHS[a.graph].nodes):
                overrides.setdefault(node, {}).update(values)
    launcher = GraphLauncher(a.graph, a.params_file, overrides, max_restarts=a.max_restarts,
                             restart_window_s=a.restart_window)
    return launcher.run(a.duration)


def _guide(args) -> int:
    from dynaguide_ros.guide_cli import run_guide

    return run_guide(args)


def _reset(args) -> int:
    from dynaguide_ros.ros_cli import run_reset

    return run_reset(args)


def _topic(args) -> int:
    from dynaguide_ros.ros_cli import run_topic

    return run_topic(args)


def _node(args) -> int:
    from dynaguide_ros.run_node import run

    return run(args.name, args.ros_args)


def _serve(args) -> int:
    from dynaguide_ros.selfcheck import serve

    return serve(args)


def _check(args) -> int:
    from dynaguide_ros.selfcheck import check

    return check(args)


def _record(args) -> int:
    from dynaguide_ros.recorder import run_record

    return run_record(args)


def _view(args) -> int:
    from dynaguide_ros.viewer import run_view

    return run_view(args)


# ------------------------------------------------------------------------------------------ the parsers
def register_demo(subparsers) -> None:
    p = subparsers.add_parser("demo", help="run the CALVIN sim graph headless, guided and unguided, and draw both",
                              description=DEMO_DESCRIPTION)
    p.add_argument("--behaviour", default="drawer_open")
    p.add_argument("--goals", type=int, default=20, help="number of goal images (the CALVIN experiments: 20)")
    p.add_argument("--sim-seconds", type=float, default=13.4,
                   help="simulated seconds per run from the first action (13.4 s = 400 control steps at 30 Hz, the "
                        "CALVIN protocol): the same world time for guided and unguided runs, whatever the compute")
    p.add_argument("--duration", type=float, default=1800.0,
                   help="wall-clock cap per run (s), after the graph has started")
    # unset/0 = the guidance manager's default: config/calvin_sim.yaml's (the protocol's s = 10 for the shipped
    # models), else GuidanceConfig's (dynaguide/guidance/goals.py)
    p.add_argument("--scale", type=float, default=None,
                   help="guidance scale s (default: the graph's, config/calvin_sim.yaml, chosen for the shipped "
                        "models; 0: no guidance, unguided chunks)")
    p.add_argument("--sigma", type=float, default=0.0, help="distance temperature sigma (0: GuidanceConfig's default)")
    p.add_argument("--stochastic-steps", type=int, default=0,
                   help="M (0: GuidanceConfig's default); compute time grows with M on a CPU")
    p.add_argument("--seed", type=int, default=0, help="scene and policy-noise seed")
    p.add_argument("--random-scene", action="store_true",
                   help="start in a fully random scene; by default the scene makes --behaviour possible (e.g. the "
                        "drawer closed enough to open), as in the CALVIN experiments")
    p.add_argument("--image-size", type=int, default=None,
                   help="static camera size (default: config/calvin_sim.yaml's, the size the models were trained on)")
    p.add_argument("--checkpoints", default=None,
                   help="a directory with policy/ and dynamics/ (default: policy_node.models, config/calvin_sim.yaml)")
    p.add_argument("--untrained", action="store_true", help="random models (plumbing only)")
    p.add_argument("--out", default="outputs/demo")
    p.add_argument("--ready-timeout", type=float, default=600.0,
                   help="seconds to wait for the graph to answer and plan (four processes import torch at start; "
                        "on a loaded 2-core machine this took over 180 s)")
    p.add_argument("--unguided", action="store_true", help="only the unguided run (the base policy)")
    p.add_argument("--guided-only", action="store_true", help="only the guided run")
    p.add_argument("--wall-clock", action="store_true",
                   help="real-time 30 Hz sim (late actions dropped) instead of lockstep simulated time")
    p.add_argument("--measure", type=int, default=0, metavar="N",
                   help="run N seeds guided and unguided and write the steering summary to --json")
    p.add_argument("--json", default=None, help="with --measure: output file (e.g. results/calvin/demo_steering.json)")
    p.add_argument("--view", action="store_true",
                   help="watch the runs live in the native rerun viewer (`dynaguide view`'s picture; the view extra)")
    p.add_argument("--view-web", action="store_true", help="... in rerun's web viewer on 127.0.0.1 (up until Ctrl-C)")
    p.add_argument("--view-save", default=None, metavar="RUN.rrd",
                   help="... into rerun files, one per run (RUN.guided.rrd, RUN.unguided.rrd)")
    p.add_argument("--view-grpc-port", type=int, default=9876, help="rerun gRPC port (localhost)")
    p.add_argument("--view-web-port", type=int, default=9090, help="rerun web viewer port (localhost)")
    p.set_defaults(func=_demo)


def register_launch(subparsers) -> None:
    p = subparsers.add_parser("launch", help="start a node graph (pip equivalent of ros2 launch)")
    p.add_argument("graph", choices=sorted(GRAPHS))
    p.add_argument("--params-file", help="YAML parameters replacing the graph's files in config/")
    p.add_argument("--set", action="append", default=[], metavar="NODE.PARAM=VALUE",
                   help="override one parameter, e.g. --set policy_node.replan_period_s=1.0")
    p.add_argument("--untrained", action="store_true",
                   help="run randomly initialised models instead of the shipped trained ones (plumbing only; "
                        "refused with the real arm backend)")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument("--max-restarts", type=int, default=3, help="restarts allowed per node within --restart-window")
    p.add_argument("--restart-window", type=float, default=60.0, metavar="S",
                   help="seconds over which --max-restarts is counted; past it the graph stops, exit code 1")
    p.set_defaults(func=_launch)


def register_guide(subparsers) -> None:
    p = subparsers.add_parser("guide", help="set, retune or clear the goal images steering the policy",
                              description="Set the goal images steering the policy, retune s / sigma / M of the "
                                          "guidance in force (no images needed), or clear it.")
    p.add_argument("--positive", nargs="*", default=[], help="images of desired outcomes (large ones are downsized "
                   f"to {MAX_GOAL_SIDE} px)")
    p.add_argument("--negative", nargs="*", default=[], help="images of undesired outcomes")
    p.add_argument("--scale", type=float, default=None,
                   help="guidance scale s (default: keep the current one; 0 = no guidance, unguided chunks)")
    p.add_argument("--sigma", type=float, default=0.0, help="distance temperature (0 = keep current)")
    p.add_argument("--stochastic-steps", type=int, default=0, help="M (0 = keep current)")
    p.add_argument("--clear", action="store_true", help="remove guidance: run the base policy")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                   help="seconds to wait for the graph to answer")
    p.set_defaults(func=_guide)


def register_reset(subparsers) -> None:
    p = subparsers.add_parser("reset", help="reset the sim table (calvin/reset): a new scene, the arm at home")
    p.add_argument("--seed", type=int, default=-1, help="scene seed (default: continue the bridge's random stream)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the graph")
    p.set_defaults(func=_reset)


def register_topic(subparsers) -> None:
    p = subparsers.add_parser("topic", help="list topics, print messages, measure rates (no ros2 CLI needed)")
    p.add_argument("action", choices=("list", "echo", "hz"))
    p.add_argument("topic", nargs="?", help="topic name for echo / hz (e.g. calvin/behaviour)")
    p.add_argument("-t", "--show-types", action="store_true", help="list: print each topic's type")
    p.add_argument("-n", "--count", type=int, default=0, help="echo / hz: stop after N messages (0: run on)")
    p.add_argument("--duration", type=float, default=0.0, help="echo / hz: stop after this many seconds (0: run on)")
    p.add_argument("--window", type=float, default=5.0, help="hz: averaging window (s)")
    p.add_argument("--wait", type=float, default=DISCOVERY_S,
                   help="seconds to wait for discovery (list) / for a publisher (echo, hz)")
    p.set_defaults(func=_topic)


def register_node(subparsers) -> None:
    p = subparsers.add_parser("node", help="run one node (e.g. policy_node --ros-args --params-file F)")
    p.add_argument("name", choices=sorted(NODE_ENTRY_POINTS))
    p.add_argument("ros_args", nargs=argparse.REMAINDER, help="--ros-args ... passed to rclpy")
    p.set_defaults(func=_node)


def register_interfaces(subparsers) -> None:
    p = subparsers.add_parser("interfaces", help="check the ROS 2 interfaces between two processes over DDS")
    sub = p.add_subparsers(dest="role", required=True)
    s = sub.add_parser("serve", help="echo ActionChunks and digest SetGuidance images")
    s.add_argument("ros_args", nargs=argparse.REMAINDER)
    s.set_defaults(func=_serve)
    c = sub.add_parser("check", help="send chunks and images to a running 'serve' and verify them")
    c.add_argument("--chunks", type=int, default=10)
    c.add_argument("--images", type=int, default=20)
    c.add_argument("--size", type=int, default=224)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--timeout", type=float, default=30.0)
    c.set_defaults(func=_check)


def register_record(subparsers) -> None:
    p = subparsers.add_parser("record", help="record graph topics to an MCAP file (ros2 bag / Foxglove readable)")
    p.add_argument("-o", "--out", required=True, help="output file (.mcap)")
    p.add_argument("--topics", nargs="*", default=None,
                   help=f"topics to record (NAME or NAME:pkg/msg/Type; default: {' '.join(DEFAULT_TOPICS)})")
    p.add_argument("--topic", action="append", help="an extra topic, added to --topics (repeatable)")
    p.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0 = until Ctrl-C)")
    p.add_argument("--max-bytes", type=float, default=0,
                   help="stop once this many message bytes are recorded, before compression (0 = no limit)")
    p.add_argument("--compression", choices=COMPRESSIONS, default="zstd")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(func=_record)


def add_output_arguments(p, prefix: str = "") -> None:
    """``--web``, ``--native``, ``--save``, ports (``prefix``: ``view-`` for ``dynaguide demo``)."""
    p.add_argument(f"--{prefix}web", dest="web", action="store_true",
                   help=f"serve rerun's web viewer on {LOCALHOST} (kept up after the run until Ctrl-C)")
    p.add_argument(f"--{prefix}native", dest="native", action="store_true",
                   help="open the native rerun viewer (the default when neither --web nor --save is given)")
    p.add_argument(f"--{prefix}save", dest="save", default=None, metavar="RUN.rrd", help="write a rerun file")
    p.add_argument(f"--{prefix}grpc-port", dest="grpc_port", type=int, default=GRPC_PORT,
                   help="port of the rerun gRPC server (localhost)")
    p.add_argument(f"--{prefix}web-port", dest="web_port", type=int, default=WEB_PORT,
                   help="port of the web viewer (localhost)")


def register_view(subparsers) -> None:
    p = subparsers.add_parser("view", help="watch the running graph (or an MCAP recording) in rerun",
                              description=VIEW_DESCRIPTION)
    p.add_argument("recording", nargs="?", default=None,
                   help="an MCAP file written by `dynaguide record` to replay (default: the running graph)")
    p.add_argument("--duration", type=float, default=0.0,
                   help="live: stop after this many wall-clock seconds (0: until Ctrl-C)")
    add_output_arguments(p)
    p.set_defaults(func=_view)
