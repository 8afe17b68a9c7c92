"""The CALVIN sim graph over real DDS between real processes (the pip launcher starts them)."""

from __future__ import annotations

import io
import math
import threading
import time

import numpy as np
import pytest
from _ros_hardening import spin_until

pytestmark = pytest.mark.ros


class LineBuffer(io.TextIOBase):
    def __init__(self):
        self.lines: list[str] = []
        self._lock = threading.Lock()

    def write(self, s):
        with self._lock:
            self.lines.append(s)
        return len(s)

    def text(self) -> str:
        with self._lock:
            return "".join(self.lines)


@pytest.fixture(scope="module")
def ros_node():
    import rclpy

    rclpy.init()
    node = rclpy.create_node("graph_test_probe")
    yield node
    node.destroy_node()
    rclpy.shutdown()


def wait_log(buf: LineBuffer, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in buf.text():
            return
        time.sleep(0.2)
    raise AssertionError(f"{text!r} not logged within {timeout} s:\n{buf.text()[-4000:]}")


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    from dynaguide_ros.launcher import GraphLauncher

    state = tmp_path_factory.mktemp("guidance_state")
    buf = LineBuffer()
    launcher = GraphLauncher("calvin_sim", out=buf, overrides={
        "guidance_manager": {"state_dir": str(state), "default_stochastic_steps": 1},
        "calvin_bridge": {"static_size": 96, "gripper_size": 48, "camera_hz": 10.0},
        "policy_node": {"replan_period_s": 0.3, "runner.guidance.stochastic_steps": 1},
    })
    launcher.start()
    try:
        wait_log(buf, "guidance manager ready", 120)
        wait_log(buf, "policy node ready", 120)
        yield launcher, buf
    finally:
        launcher.stop()


def _images(n: int, seed: int, size: int = 64) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def test_guidance_steers_chunks_moves_robot_changes_live_and_survives_manager_restart(graph, ros_node):
    from dynaguide_msgs.msg import ActionChunk, CalvinState, GuidanceState, PolicyDiagnostics
    from dynaguide_ros.guide_cli import call_clear_guidance, call_set_guidance
    from dynaguide_ros.qos import LATCHED, RELIABLE

    from diagnostic_msgs.msg import DiagnosticArray

    launcher, buf = graph
    chunks, diags, states, guidance, statuses = [], [], [], [], []
    ros_node.create_subscription(DiagnosticArray, "/diagnostics",
                                 lambda m: statuses.extend(s for s in m.status if s.name.endswith(": execution")),
                                 RELIABLE)
    ros_node.create_subscription(ActionChunk, "action_chunk", chunks.append, RELIABLE)
    ros_node.create_subscription(PolicyDiagnostics, "policy/diagnostics", diags.append, RELIABLE)
    ros_node.create_subscription(CalvinState, "calvin/state", states.append, RELIABLE)
    ros_node.create_subscription(GuidanceState, "guidance/state", guidance.append, LATCHED)

    # unguided chunks flow and the simulated robot moves
    assert spin_until(ros_node, lambda: len(chunks) >= 3 and len(states) > 10, 90), buf.text()[-3000:]
    assert not any(c.guided for c in chunks)
    tcp0 = np.array(states[0].robot_obs[:3])
    assert spin_until(ros_node, lambda: np.linalg.norm(np.array(states[-1].robot_obs[:3]) - tcp0) > 0.01, 30), \
        "the robot did not move under the policy's chunks"
    # the bridge reports its executor: actions executed from the chunks, ticks = executed + held
    assert spin_until(ros_node, lambda: bool(statuses), 10)
    counts = {kv.key: int(kv.value) for kv in statuses[-1].values}
    assert counts["executed"] > 0 and counts["ticks"] == counts["executed"] + counts["held"], counts

    # set guidance: chunks become guided with a finite metric
    res = call_set_guidance(_images(2, 1), _images(1, 2), scale=2.0, node=ros_node)
    assert res.success, res.message
    assert (res.num_positive, res.num_negative) == (2, 1)
    rev1 = res.revision
    n = len(chunks)
    assert spin_until(ros_node, lambda: any(c.guided for c in chunks[n:]), 60), buf.text()[-3000:]
    assert spin_until(ros_node, lambda: any(d.guided and math.isfinite(d.metric) and d.guidance_revision == rev1
                                            for d in diags), 60)
    # the latency budget rides along: n_action_steps (8) x action_dt (1/30 s), p95 of the measured compute
    d = diags[-1]
    assert d.budget_ms == pytest.approx(8 / 30 * 1e3, rel=1e-3)
    assert 0 < d.compute_p95_ms < 60_000 and d.keeps_up == (d.compute_p95_ms <= d.budget_ms)

    # change guidance at run time, nothing restarted
    res2 = call_set_guidance(_images(1, 3), [], scale=1.0, node=ros_node)
    assert res2.success and res2.revision == rev1 + 1
    assert spin_until(ros_node, lambda: any(d.guidance_revision == res2.revision for d in diags), 60)

    # restart the guidance manager: the stored guidance comes back
    launcher.restart("guidance_manager")
    wait_log(buf, f"restored guidance revision {res2.revision}", 120)
    assert spin_until(ros_node, lambda: any(g.source == "restored" and g.revision == res2.revision and g.active
                                            for g in guidance), 30)

    # clearing goes back to the base policy
    assert call_clear_guidance(node=ros_node).success
    n = len(chunks)
    assert spin_until(ros_node, lambda: len(chunks) > n + 1 and not chunks[-1].guided, 60)


def test_malformed_set_guidance_requests_are_rejected_and_change_nothing(graph, ros_node):
    from sensor_msgs.msg import Image

    from dynaguide_msgs.srv import SetGuidance
    from dynaguide_ros.conversions import rgb_to_image_msg
    from dynaguide_ros.guide_cli import call_set_guidance

    launcher, buf = graph
    good = call_set_guidance(_images(1, 10), [], scale=1.0, node=ros_node)
    assert good.success
    client = ros_node.create_client(SetGuidance, "set_guidance")
    assert client.wait_for_service(timeout_sec=30)

    def call(req):
        import rclpy

        fut = client.call_async(req)
        rclpy.spin_until_future_complete(ros_node, fut, timeout_sec=60)
        assert fut.result() is not None, "no answer"
        return fut.result()

    img = rgb_to_image_msg(_images(1, 11)[0])
    bad_enc = rgb_to_image_msg(_images(1, 12)[0])
    bad_enc.encoding = "yuv422"
    short = rgb_to_image_msg(_images(1, 13)[0])
    short.data = bytes(short.data)[:-7]
    zero = Image(height=0, width=0, encoding="rgb8", step=0)
    huge = Image(height=100000, width=100000, encoding="rgb8", step=300000)
    cases = {
        "empty": (SetGuidance.Request(), "no goal images"),
        "encoding": (SetGuidance.Request(positive=[bad_enc]), "unsupported encoding"),
        "length": (SetGuidance.Request(positive=[short]), "height*step"),
        "zero-size": (SetGuidance.Request(negative=[zero]), "at least"),
        "huge": (SetGuidance.Request(positive=[huge]), "at most"),
        "nan scale": (SetGuidance.Request(positive=[img], scale=float("nan")), "finite"),
        "negative sigma": (SetGuidance.Request(positive=[img], sigma=-1.0), ">= 0"),
        "negative M": (SetGuidance.Request(positive=[img], stochastic_steps=-3), "integer >= 1"),
        "hundreds": (SetGuidance.Request(positive=[img] * 300), "exceed the limit"),
    }
    for name, (req, expected) in cases.items():
        res = call(req)
        assert not res.success, name
        assert expected in res.message, f"{name}: {res.message}"
        assert res.revision == good.revision, f"{name} changed the revision"
    # still alive, and the prior guidance is the one in force
    again = call_set_guidance(_images(1, 14), [], node=ros_node)
    assert again.success and again.revision == good.revision + 1
    assert launcher.running()["guidance_manager"]


def test_a_request_without_images_retunes_the_guidance_in_force(graph, ros_node):
    """``dynaguide guide --scale 7`` with no images: the goal embeddings in force, the new s; σ and M kept."""
    from dynaguide_ros.guide_cli import call_set_guidance

    first = call_set_guidance(_images(3, 20), _images(1, 21), scale=2.0, sigma=25.0, node=ros_node)
    assert first.success, first.message
    retuned = call_set_guidance([], [], scale=7.0, node=ros_node)
    assert retuned.success and retuned.revision == first.revision + 1, retuned.message
    assert (retuned.num_positive, retuned.num_negative) == (3, 1), retuned.message
    assert "scale 7, sigma 25" in retuned.message, retuned.message


def test_scale_zero_over_set_guidance_gives_unguided_chunks(graph, ros_node):
    """s = 0 is expressible over ``/set_guidance`` (``set_scale``) and the policy then samples unguided chunks
    under that revision; a later request without a scale keeps s = 0, one with a scale guides again."""
    from dynaguide_msgs.msg import GuidanceState, PolicyDiagnostics
    from dynaguide_ros.guide_cli import call_set_guidance
    from dynaguide_ros.qos import LATCHED, RELIABLE

    launcher, buf = graph
    diags, states = [], []
    ros_node.create_subscription(PolicyDiagnostics, "policy/diagnostics", diags.append, RELIABLE)
    ros_node.create_subscription(GuidanceState, "guidance/state", states.append, LATCHED)

    def chunks_of(revision: int, n: int = 2):
        """Diagnostics of ``n`` chunks sampled under ``revision`` (the first one reported under it is left out:
        it may have been sampled just before the switch)."""
        assert spin_until(ros_node, lambda: sum(d.guidance_revision == revision for d in diags) >= n + 1, 60), \
            f"no chunks under guidance revision {revision}:\n{buf.text()[-3000:]}"
        return [d for d in diags if d.guidance_revision == revision][1:]

    guided = call_set_guidance(_images(1, 20), [], scale=2.0, node=ros_node)
    assert guided.success, guided.message
    assert all(d.guided for d in chunks_of(guided.revision)), buf.text()[-3000:]

    off = call_set_guidance(_images(1, 21), [], scale=0.0, node=ros_node)
    assert off.success and "scale 0," in off.message, off.message
    assert spin_until(ros_node, lambda: any(s.revision == off.revision and s.active and s.scale == 0.0
                                            for s in states), 30)
    seen = chunks_of(off.revision)
    assert not any(d.guided for d in seen), buf.text()[-3000:]
    assert all(math.isnan(d.metric) for d in seen)

    kept = call_set_guidance(_images(1, 22), [], node=ros_node)          # no scale given: s = 0 stays
    assert kept.success and "scale 0," in kept.message, kept.message
    again = call_set_guidance(_images(1, 23), [], scale=1.0, node=ros_node)
    assert again.success and "scale 1," in again.message
    assert all(d.guided for d in chunks_of(again.revision))
