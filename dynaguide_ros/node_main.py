"""Process entry point shared by every node: localhost DDS defaults, init, spin, clean shutdown."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from dynaguide_ros.ros_env import apply_localhost_defaults

EXIT_GRACE_S = 10.0
"""Once spinning has stopped (SIGINT/SIGTERM), the process ends within this time even if a callback
thread is stuck (the executor's worker threads are joined at interpreter exit)."""


def _other_threads_finished(timeout_s: float) -> bool:
    """Join the process's other non-daemon threads (executor workers) for up to ``timeout_s``."""
    import threading
    import time

    deadline = time.monotonic() + timeout_s
    others = [t for t in threading.enumerate() if t is not threading.current_thread() and not t.daemon]
    for t in others:
        t.join(max(0.0, deadline - time.monotonic()))
    return not any(t.is_alive() for t in others)


def _exit_if_stuck(grace_s: float):
    """Start a daemon timer that ends the process if shutdown has not finished after ``grace_s``."""
    import os
    import threading

    def _force() -> None:
        sys.stderr.write(f"shutdown did not finish within {grace_s:g} s (a callback is stuck): exiting\n")
        sys.stderr.flush()
        os._exit(1)

    timer = threading.Timer(grace_s, _force)
    timer.daemon = True
    timer.start()
    return timer


def spin_node(make_node: Callable[[], object], argv: Sequence[str] | None = None, threads: int = 1) -> int:
    """Create the node from ``make_node()`` and spin it until SIGINT/SIGTERM.

    ``argv`` may carry ``--ros-args ...`` (parameters, remaps, ``--params-file``).  The node's
    ``destroy_node`` runs on shutdown, so nodes put fail-safe actions (hold, damp) there.  Meant as a
    process's main job: if a callback thread is still stuck when spinning has stopped, the process is
    ended ``EXIT_GRACE_S`` later (exit code 1) instead of hanging in the join of that thread.
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
    except Exception:
        if rclpy.ok():
            raise  # a real error while running
        # a callback that ran while SIGINT/SIGTERM shut the context down (e.g. a timer publishing on an
        # invalidated publisher): part of the shutdown, not a failure; destroy_node's fail-safe still runs below
    finally:
        watchdog = _exit_if_stuck(EXIT_GRACE_S)
        if node is not None:
            executor.remove_node(node)
            node.destroy_node()
        if isinstance(executor, MultiThreadedExecutor):  # never block here on a stuck worker thread
            executor.shutdown(timeout_sec=1.0, wait_for_threads=False)
        else:
            executor.shutdown(timeout_sec=1.0)
        if rclpy.ok():
            rclpy.shutdown()
        if _other_threads_finished(timeout_s=2.0):
            watchdog.cancel()
    return 0
