"""``dynaguide node NAME [--ros-args ...]`` — run one node of the stack in this process."""

from __future__ import annotations

import importlib
import os
import signal
import sys

from dynaguide_ros.graphs import NODE_ENTRY_POINTS

LAUNCHER_PID_ENV = "DYNAGUIDE_LAUNCHER_PID"
"""Set by :class:`dynaguide_ros.launcher.GraphLauncher` for its node processes: the launcher's pid."""


def end_with_launcher(env=os.environ) -> None:
    """A node the launcher started ends when the launcher does, even when it cannot stop its nodes (SIGKILL, a
    crash): Linux's parent-death signal delivers SIGTERM, the node's clean shutdown path (rclpy's handler).
    Each node runs in a session of its own (so a terminal's Ctrl-C reaches the launcher only), hence this."""
    pid = env.get(LAUNCHER_PID_ENV, "")
    if not pid.isdigit() or not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM))
    if os.getppid() != int(pid):   # the launcher was gone before the line above
        sys.exit(0)


def run(name: str, ros_args: list[str]) -> int:
    if name not in NODE_ENTRY_POINTS:
        raise SystemExit(f"unknown node {name!r}; choose from {sorted(NODE_ENTRY_POINTS)}")
    module, func = NODE_ENTRY_POINTS[name].split(":")
    return int(getattr(importlib.import_module(module), func)(ros_args) or 0)


if __name__ == "__main__":  # python -m dynaguide_ros.run_node NAME [--ros-args ...] (the launcher's node processes)
    end_with_launcher()
    if len(sys.argv) < 2:
        raise SystemExit(f"usage: python -m dynaguide_ros.run_node NAME [--ros-args ...]; "
                         f"NAME: {sorted(NODE_ENTRY_POINTS)}")
    try:
        sys.exit(run(sys.argv[1], sys.argv[2:]))
    except KeyboardInterrupt:   # stopped while still importing, before rclpy's handlers: nothing to clean up
        sys.exit(130)
