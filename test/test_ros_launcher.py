"""The pip launcher restarts a crashing node a bounded number of times, then gives up."""

from __future__ import annotations

import io

import pytest

pytestmark = pytest.mark.ros


def test_crashing_node_is_restarted_boundedly_then_given_up(tmp_path):
    from dynaguide_ros.graphs import GraphSpec, NodeSpec
    from dynaguide_ros.launcher import GraphLauncher

    # a real node with a bad parameter: camera_node refuses a source that does not exist and exits non-zero
    spec = GraphSpec(params_files=("calvin_sim.yaml",), nodes=(NodeSpec("camera_node", "broken_camera"),))
    out = io.StringIO()
    launcher = GraphLauncher(spec, overrides={"broken_camera": {"source": str(tmp_path / "missing")}},
                             max_restarts=2, out=out)
    code = launcher.run(duration=90)
    log = out.getvalue()
    assert code == 1, log
    assert "restarting (1/2)" in log and "restarting (2/2)" in log, log
    assert "giving up" in log and "restarting (3/2)" not in log, log
    assert "[broken_camera]" in log and "neither a device" in log  # prefixed child output, with the reason
    assert not any(launcher.running().values())
