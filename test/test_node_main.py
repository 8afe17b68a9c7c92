"""``spin_node``: a callback caught by the shutdown is part of the shutdown, a callback error while running is not.

Each case runs in its own process (``spin_node`` owns rclpy's global init/shutdown), on localhost DDS.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.ros

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
