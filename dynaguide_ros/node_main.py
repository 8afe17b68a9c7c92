"""Process entry point shared by every node: localhost DDS defaults, init, spin, clean shutdown."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from dynaguide_ros.ros_env import apply_localhost_defaults

EXIT_GRACE_S = 10.0
EXIT_CONFIG = 78
"""Exit code of a node that cannot start with its configuration (BSD sysexits' EX_CONFIG): an unknown or
invalid parameter, a missing model file, a camera that cannot be opened.  The launcher does not restart a
node that exits with it (the same configuration would fail the same way)."""


def _startup_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "this configuration cannot run" when raised while a node is constructed."""
    from rclpy.exceptions import ParameterException

    from dynaguide.config import ConfigError

    return (ConfigError, ValueError, OSError, ParameterException)
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


def _shutdown_quietly(rclpy) -> None:
    """``rclpy.shutdown()`` after a failed construction: the context destroys the half-built node it tracks,
    whose ``destroy_node`` may fail on attributes it never set — that must not hide the real error."""
    try:
        if rclpy.ok():
            rclpy.shutdown()
    except Exception:  # noqa: BLE001 - secondary to the error already reported
        pass


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
    name = getattr(make_node, "__name__", "node")
    # One thread unless a node needs callbacks to wait on each other (the guidance manager): rclpy's
    # MultiThreadedExecutor polls with the GIL held and starved the policy's sampler thread (10x slower).
    executor = SingleThreadedExecutor() if threads <= 1 else MultiThreadedExecutor(num_threads=threads)
    try:
        try:
            node = make_node()
        except _startup_errors() as exc:
            # one line naming the problem; the partly built node is cleaned up by rclpy.shutdown below
            sys.stderr.write(f"{name}: cannot start: {exc}\n")
            sys.stderr.flush()
            _shutdown_quietly(rclpy)
            return EXIT_CONFIG
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
        _shutdown_quietly(rclpy)
        if _other_threads_finished(timeout_s=2.0):
            watchdog.cancel()
    return 0
