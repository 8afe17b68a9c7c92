"""The pip user's tools: ``dynaguide guide`` mistakes as one line, ``reset`` and ``topic`` against a real bridge,
``--version``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dynaguide_cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ), cwd=REPO)


@pytest.mark.parametrize("args,says", [
    (["--positive", "a.png", "--clear"], "cannot be combined with --positive"),
    (["--scale", "3", "--clear"], "cannot be combined with --scale"),
    ([], "give goal images"),
    (["--scale", "-1"], "--scale must be a finite number >= 0"),
    (["--positive", "missing.png"], "cannot read image missing.png"),
])
def test_guide_refuses_contradictory_or_bad_flags_with_one_line(args, says, capsys):
    from dynaguide_cli.main import main

    assert main(["guide", *args]) == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1 and "rejected: rejected" not in err, err


def test_guide_downsizes_a_large_photo_itself(tmp_path):
    from PIL import Image

    from dynaguide_ros.guide_cli import MAX_GOAL_SIDE, load_rgb

    Image.fromarray(np.zeros((2000, 3000, 3), np.uint8)).save(tmp_path / "photo.jpg")
    rgb = load_rgb(tmp_path / "photo.jpg")
    assert rgb.shape == (MAX_GOAL_SIDE * 2 // 3, MAX_GOAL_SIDE, 3)


@pytest.mark.ros
def test_guide_without_a_graph_says_it_waits_and_gives_up_after_the_timeout():
    proc = _cli("guide", "--scale", "3", "--timeout", "2")
    assert proc.returncode == 1, proc.stderr
    assert "waiting up to 2 s for the graph" in proc.stderr and "not available" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_version_prints_the_package_version():
    proc = _cli("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("dynaguide 0."), proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def bridge(tmp_path_factory):
    from conftest import ManagedProcess

    log = tmp_path_factory.mktemp("bridge") / "bridge.log"
    proc = ManagedProcess([sys.executable, "-m", "dynaguide_cli", "node", "calvin_bridge", "--ros-args",
                           "-p", "static_size:=32", "-p", "gripper_size:=16", "-p", "camera_hz:=10.0"],
                          log, env=dict(os.environ))
    proc.wait_for_log("calvin bridge ready", timeout=120)
    yield proc
    proc.stop()


@pytest.mark.ros
@pytest.mark.parametrize("args,says", [
    (["topic", "list", "-t", "--wait", "8"], "/calvin/state [dynaguide_msgs/msg/CalvinState]"),
    (["topic", "echo", "calvin/state", "-n", "1"], "robot_obs: ["),
    (["topic", "echo", "camera/rgb_static", "-n", "1"], "values)]"),     # image data summarised, not dumped
    (["topic", "hz", "camera/rgb_static", "--duration", "3.5"], "average rate: "),
    (["reset", "--seed", "3"], "scene reset"),
    (["topic", "echo", "/robot_description", "-n", "1"], "world_to_panda"),   # latched: the URDF for rviz
])
def test_topic_and_reset_work_against_a_running_bridge(bridge, args, says):
    proc = _cli(*args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert says in proc.stdout, proc.stdout[-3000:]


@pytest.mark.ros
def test_topic_hz_measures_the_publishing_rate(bridge):
    proc = _cli("topic", "hz", "calvin/state", "--duration", "4.5", "--window", "3")
    rates = [float(line.split()[2]) for line in proc.stdout.splitlines() if line.startswith("average rate")]
    assert rates and 20.0 < rates[-1] < 40.0, proc.stdout  # the bridge's 30 Hz control tick
