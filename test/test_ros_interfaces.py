"""The ROS interfaces: DDS stays on localhost unless opted in, messages convert both ways and refuse malformed
content, and content crosses real DDS between two of our processes intact (and only over loopback)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

pytestmark = pytest.mark.ros


def test_localhost_defaults_are_forced_unless_opted_in():
    from dynaguide_ros.ros_env import localhost_env

    env = localhost_env({"ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET", "ROS_STATIC_PEERS": "10.0.0.5"}, domain_id=7)
    assert env["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    assert "ROS_STATIC_PEERS" not in env
    assert env["FASTDDS_DEFAULT_PROFILES_FILE"].endswith("fastdds_localhost.xml")
    assert env["ROS_DOMAIN_ID"] == "7"
    opted = localhost_env({"DYNAGUIDE_ROBOT_NETWORK": "1", "ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET"})
    assert opted["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "SUBNET"
    with pytest.raises(ValueError):
        localhost_env({}, domain_id=250)


def test_image_and_chunk_conversions_round_trip_and_reject_malformed():
    from dynaguide_ros.conversions import (MessageError, chunk_from_msg, chunk_to_msg, embedding_from_msg,
                                           embedding_to_msg, rgb_from_image_msg, rgb_to_image_msg, seconds_to_time)

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (31, 17, 3), dtype=np.uint8)
    msg = rgb_to_image_msg(rgb)
    assert np.array_equal(rgb_from_image_msg(msg), rgb)
    msg.encoding = "bgr8"
    assert np.array_equal(rgb_from_image_msg(msg), rgb[:, :, ::-1])
    msg.encoding = "yuv422"
    with pytest.raises(MessageError, match="unsupported encoding"):
        rgb_from_image_msg(msg)
    msg.encoding = "rgb8"
    msg.data = msg.data[:-1]
    with pytest.raises(MessageError, match="height\\*step"):
        rgb_from_image_msg(msg)

    actions = rng.standard_normal((16, 7)).astype(np.float32)
    chunk = chunk_to_msg(actions, "calvin_rel_ee", seconds_to_time(12.5), 1 / 30, start_index=1)
    assert np.array_equal(chunk_from_msg(chunk), actions)
    chunk.horizon = 15
    with pytest.raises(MessageError, match="expected horizon\\*action_dim"):
        chunk_from_msg(chunk)

    tokens = rng.standard_normal((6, 5)).astype(np.float32)
    assert np.array_equal(embedding_from_msg(embedding_to_msg(tokens, (2, 3), "x")), tokens)


def test_two_processes_exchange_chunks_and_twenty_224px_goal_images(start_process):
    server = start_process("serve", "interfaces", "serve")
    server.wait_for_log("echo ready")
    client = subprocess.run([sys.executable, "-m", "dynaguide_cli", "interfaces", "check", "--images", "20",
                             "--size", "224", "--chunks", "20"], capture_output=True, text=True, timeout=90)
    assert client.returncode == 0, client.stdout + client.stderr + server.log()
    report = json.loads(client.stdout.strip().splitlines()[-1])
    assert report["ok"] and report["images"] == 20 and report["chunks"] == 20


@pytest.mark.skipif(shutil.which("tcpdump") is None or os.geteuid() != 0, reason="needs tcpdump as root")
def test_dds_traffic_stays_on_loopback(start_process, tmp_path):
    """While two processes talk, no DDS packet (or any multicast) appears on a non-loopback interface."""
    ifaces = [i for i in os.listdir("/sys/class/net") if i != "lo"]
    if not ifaces:
        pytest.skip("no non-loopback interface to watch")
    captures = []
    for iface in ifaces:
        out = tmp_path / f"{iface}.txt"
        captures.append((iface, out, subprocess.Popen(
            ["tcpdump", "-i", iface, "-n", "-l", "udp and (multicast or portrange 7400-7700 or portrange 26600-27000)"],
            stdout=open(out, "w"), stderr=subprocess.DEVNULL)))
    time.sleep(1.0)
    try:
        server = start_process("serve", "interfaces", "serve")
        server.wait_for_log("echo ready")
        client = subprocess.run([sys.executable, "-m", "dynaguide_cli", "interfaces", "check", "--images", "4"],
                                capture_output=True, text=True, timeout=60)
        assert client.returncode == 0, client.stdout + client.stderr
        time.sleep(1.0)
    finally:
        for _, _, p in captures:
            p.terminate()
            p.wait(timeout=5)
    for iface, out, _ in captures:
        assert out.read_text().strip() == "", f"DDS/multicast traffic seen on {iface}:\n{out.read_text()[:2000]}"
