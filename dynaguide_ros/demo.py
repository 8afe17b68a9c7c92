"""``dynaguide demo`` — the README's main job.

Interim version (foundation): starts the interface echo node as its own process and checks, over real
DDS on loopback, that action chunks and a 20-image ``SetGuidance`` request cross intact.
"""

from __future__ import annotations

import subprocess
import sys
import time

from dynaguide_ros.ros_env import localhost_env


def _run(args) -> int:
    env = localhost_env()
    server = subprocess.Popen([sys.executable, "-m", "dynaguide.cli", "interfaces", "serve"], env=env)
    try:
        time.sleep(1.0)
        return subprocess.call([sys.executable, "-m", "dynaguide.cli", "interfaces", "check"], env=env)
    finally:
        server.terminate()
        server.wait(timeout=10)


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="run the main job (headless)")
    p.set_defaults(func=_run)
