"""Helpers shared by the ``test_ros_hardening_*`` modules (real processes, real DDS on loopback).

Every process inherits the localhost-only DDS defaults that ``conftest.py`` applies to ``os.environ``
(LOCALHOST discovery, the loopback Fast DDS profile, the test run's own ROS_DOMAIN_ID).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ManagedProcess


class Processes:
    """Module-scoped processes (``python -m dynaguide_cli ...``), stopped with SIGINT at teardown."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.started: list[ManagedProcess] = []

    def start(self, name: str, *args: str) -> ManagedProcess:
        assert os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE") == "LOCALHOST", "network rule: localhost only"
        proc = ManagedProcess([sys.executable, "-m", "dynaguide_cli", *args],
                              self.directory / f"{name}-{len(self.started)}.log", env=dict(os.environ))
        self.started.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            proc.stop()


def processes_fixture(tmp_path_factory, name: str):
    procs = Processes(tmp_path_factory.mktemp(name))
    try:
        yield procs
    finally:
        procs.stop_all()


def probe_fixture(name: str):
    import rclpy

    assert os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE") == "LOCALHOST"
    rclpy.init()
    node = rclpy.create_node(name)
    try:
        yield node
    finally:
        node.destroy_node()
        rclpy.shutdown()


def spin_until(node, predicate, timeout: float) -> bool:
    import rclpy

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        rclpy.spin_once(node, timeout_sec=0.02)
    return predicate()


def spin_for(node, seconds: float) -> None:
    spin_until(node, lambda: False, seconds)


def alive(proc: ManagedProcess) -> None:
    if proc.proc.poll() is not None:
        pytest.fail(f"{proc.args[4:6]} died with exit code {proc.proc.returncode}:\n{proc.log()[-4000:]}")


def random_rgb(seed: int, size: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
