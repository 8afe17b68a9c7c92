"""``spin_node``: a callback caught by the shutdown is part of the shutdown, a callback error while running is not;
SIGINT ends the process even when a callback is stuck.

Each case runs in its own process (``spin_node`` owns rclpy's global init/shutdown), on localhost DDS.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.ros

REPO = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent('''
    import sys
    import rclpy
    from rclpy.node import Node
    from std_msgs.msg import String
    from dynaguide_ros.node_main import spin_node

    class Racing(Node):
        """Its timer publishes after the context went down: what SIGINT during a publish looks like."""
        def __init__(self):
            super().__init__("spin_node_race")
            self.pub = self.create_publisher(String, "race", 1)
            self.create_timer(0.05, self.tick)
        def tick(self):
            if sys.argv[1] == "shutdown":
                rclpy.shutdown()           # the signal handler's effect
            self.pub.publish(String(data="x"))
            if sys.argv[1] == "error":
                raise RuntimeError("a real callback bug")
        def destroy_node(self):
            print("fail-safe ran", flush=True)
            super().destroy_node()

    sys.exit(spin_node(Racing, []))
''')


@pytest.mark.parametrize("case,code,says", [("shutdown", 0, "fail-safe ran"), ("error", 1, "a real callback bug")])
def test_spin_node_treats_a_callback_racing_the_shutdown_as_shutdown(case, code, says):
    assert os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE") == "LOCALHOST"
    proc = subprocess.run([sys.executable, "-c", SCRIPT, case], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ))
    out = proc.stdout + proc.stderr
    assert proc.returncode == code, out[-3000:]
    assert says in out and "fail-safe ran" in out, out[-3000:]


STUCK_NODE = """
import os, signal, threading, time
from dynaguide_ros.node_main import spin_node

def make():
    from rclpy.callback_groups import ReentrantCallbackGroup
    from rclpy.node import Node
    node = Node("stuck_callback_node")
    node.create_timer(0.1, lambda: time.sleep(3600), callback_group=ReentrantCallbackGroup())
    threading.Timer(1.5, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
    return node

raise SystemExit(spin_node(make, [], threads=2))
"""


def test_sigint_ends_a_node_even_when_a_callback_is_stuck(tmp_path):
    """spin_node: a callback thread that never returns must not keep the process alive after SIGINT."""
    import time

    from dynaguide_ros.node_main import EXIT_GRACE_S

    assert os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE") == "LOCALHOST"
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", STUCK_NODE], capture_output=True, text=True, cwd=REPO,
                          env=dict(os.environ), timeout=120)
    took = time.monotonic() - t0
    assert proc.returncode == 1 and "shutdown did not finish" in proc.stderr, (proc.returncode, proc.stderr[-2000:])
    assert took < 1.5 + EXIT_GRACE_S + 30, took  # start-up (imports) + SIGINT at 1.5 s + grace
