"""The launcher's restart budget: a node that keeps crashing stops the whole graph with a non-zero exit, and the
budget counts restarts per time window."""

from __future__ import annotations

import io
import sys

import pytest


@pytest.fixture
def fake_nodes(monkeypatch):
    """Node commands replaced by tiny Python processes: ``crash`` exits 3 at once, ``ok`` sleeps."""
    import dynaguide_ros.launcher as launcher

    def command(spec, _params):
        if spec.name.startswith("crash"):
            return [sys.executable, "-c", "import sys; sys.exit(3)"]
        return [sys.executable, "-c", "import time; time.sleep(120)"]

    monkeypatch.setattr(launcher, "node_command", command)
    return launcher


def _graph(*names):
    from dynaguide_ros.graphs import GraphSpec, NodeSpec

    return GraphSpec(params_files=("calvin_sim.yaml",), nodes=tuple(NodeSpec("camera_node", n) for n in names))


def test_launcher_gives_up_stops_the_whole_graph_and_exits_non_zero(fake_nodes, capsys):
    out = io.StringIO()
    gl = fake_nodes.GraphLauncher(_graph("crash_node", "ok_node"), max_restarts=2, restart_window_s=60.0, out=out,
                                  env={"PATH": "/usr/bin:/bin"})
    code = gl.run(duration=60)
    log = out.getvalue()
    assert code == 1, log
    assert "restarting (1/2)" in log and "restarting (2/2)" in log and "restarting (3/2)" not in log, log
    assert "crash_node exited with 3 after 2 restarts within 60 s (budget 2): giving up" in log, log
    assert "FATAL" in log and "stopping the graph" in log and "all nodes stopped" in log, log
    assert not any(gl.running().values())                     # the healthy node was stopped too
    assert "giving up" in capsys.readouterr().err


def test_launcher_restart_budget_is_per_time_window(fake_nodes):
    out = io.StringIO()
    gl = fake_nodes.GraphLauncher(_graph("crash_node"), max_restarts=1, restart_window_s=0.2, out=out,
                                  env={"PATH": "/usr/bin:/bin"})
    # each crash comes > 0.2 s after the previous restart (0.5 s back-off + start-up): the budget resets
    code = gl.run(duration=4)
    log = out.getvalue()
    assert code == 0, log
    assert gl.nodes["crash_node"].restarts >= 3 and "giving up" not in log, log
