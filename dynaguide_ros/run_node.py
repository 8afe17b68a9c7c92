"""``dynaguide node NAME [--ros-args ...]`` — run one node of the stack in this process."""

from __future__ import annotations

import importlib

from dynaguide_ros.graphs import NODE_ENTRY_POINTS


def run(name: str, ros_args: list[str]) -> int:
    if name not in NODE_ENTRY_POINTS:
        raise SystemExit(f"unknown node {name!r}; choose from {sorted(NODE_ENTRY_POINTS)}")
    module, func = NODE_ENTRY_POINTS[name].split(":")
    return int(getattr(importlib.import_module(module), func)(ros_args) or 0)


if __name__ == "__main__":  # python -m dynaguide_ros.run_node NAME [--ros-args ...] (the launcher's node processes)
    import sys

    if len(sys.argv) < 2:
        raise SystemExit(f"usage: python -m dynaguide_ros.run_node NAME [--ros-args ...]; "
                         f"NAME: {sorted(NODE_ENTRY_POINTS)}")
    sys.exit(run(sys.argv[1], sys.argv[2:]))
