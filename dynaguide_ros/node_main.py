"""Process entry point shared by every node: localhost DDS defaults, init, spin, clean shutdown."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from dynaguide_ros.ros_env import apply_localhost_defaults


def spin_node(make_node: Callable[[], "object"], argv: Sequence[str] | None = None, threads: int = 1) -> int:
    """Create the node from ``make_node()`` and spin it until SIGINT/SIGTERM.

    ``argv`` may carry ``--ros-args ...`` (parameters, remaps, ``--params-file``).  The node's
    ``destroy_node`` runs on shutdown, so nodes put fail-safe actions (hold, damp) there.
    """
    apply_localhost_defaults()
    import rclpy
    from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    # rclpy's own handlers (SIGINT and SIGTERM) wake the executor and shut the context down, so the
    # launcher's SIGTERM takes the same clean path as Ctrl-C.
    rclpy.init(args=list(sys.argv if argv is None else ["dynaguide", *argv]),
               signal_handler_options=SignalHandlerOptions.ALL)
    node = None
    # One thread unless a node needs callbacks to wait on each other (the guidance manager): rclpy's
    # MultiThreadedExecutor polls with the GIL held and starved the policy's sampler thread (10x slower).
    executor = SingleThreadedExecutor() if threads <= 1 else MultiThreadedExecutor(num_threads=threads)
    try:
        node = make_node()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            executor.remove_node(node)
            node.destroy_node()
        executor.shutdown(timeout_sec=1.0)
        if rclpy.ok():
            rclpy.shutdown()
    return 0
