"""The pip launcher: trained models by default from any directory, configuration mistakes as one clear line.

A node that cannot start with its configuration exits with ``EXIT_CONFIG`` and is not restarted (the bounded
restart budget for nodes that crash while running is covered in test_hardening.py); misspelt keys are refused
before anything starts; the real arm backend refuses untrained models and the random embedder.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.ros

REPO = Path(__file__).resolve().parents[1]


def _dynaguide(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dynaguide_cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ))


@pytest.mark.parametrize("node,params,says", [
    ("camera_node", {"source": "missing_dir/video.mp4"}, "neither a device"),
    ("policy_node", {"models": "no/such/models"}, "found neither"),
])
def test_node_with_invalid_configuration_stops_the_graph_with_one_line_and_no_restart(node, params, says, tmp_path,
                                                                                      monkeypatch):
    from dynaguide_ros.graphs import GraphSpec, NodeSpec
    from dynaguide_ros.launcher import GraphLauncher
    from dynaguide_ros.node_main import EXIT_CONFIG

    monkeypatch.chdir(tmp_path)
    spec = GraphSpec(params_files=("calvin_sim.yaml",), nodes=(NodeSpec(node, node),))
    out = io.StringIO()
    launcher = GraphLauncher(spec, overrides={node: params}, max_restarts=2, out=out)
    code = launcher.run(duration=120)
    log = out.getvalue()
    assert code == EXIT_CONFIG, log
    assert log.count("cannot start:") == 1 and says in log, log          # the node's one line, with the reason
    assert "restarting" not in log and "not restarted" in log, log
    assert "Traceback" not in log and "AttributeError" not in log, log  # nothing hides the first error
    assert not any(launcher.running().values())


@pytest.mark.parametrize("args,says", [
    (["--set", "policy_node.runner.policy_checkpont=x"], "did you mean 'runner.policy_checkpoint'"),
    (["--set", "calvin_bridge.static_sise=96"], "did you mean 'static_size'"),
    (["--set", "policy_nod.models=x"], "unknown node(s) ['policy_nod']"),
    (["--set", "policy_node.models"], "--set expects NODE.PARAM=VALUE"),
])
def test_launch_refuses_unknown_keys_before_starting_anything(args, says, tmp_path):
    proc = _dynaguide("launch", "calvin_sim", *args, "--duration", "1", cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert says in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    lines = [x for x in proc.stderr.strip().splitlines() if not x.startswith("pybullet build time")]  # pybullet's C
    assert len(lines) == 1, proc.stderr
    assert "started" not in proc.stdout, proc.stdout


def test_launch_refuses_an_unknown_key_in_a_parameters_file(tmp_path):
    data = yaml.safe_load((REPO / "config" / "calvin_sim.yaml").read_text())
    data["embedding_node"]["ros__parameters"]["embedder.knd"] = "random"
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(data))
    proc = _dynaguide("launch", "calvin_sim", "--params-file", "p.yaml", "--duration", "1", cwd=tmp_path)
    assert proc.returncode == 2 and "'embedder.knd' (did you mean 'embedder.kind'?)" in proc.stderr, proc.stderr
    assert "valid: " in proc.stderr and "embedder.image_size" in proc.stderr


@pytest.mark.parametrize("args,names", [
    (["--untrained"], "policy_node.models"),
    (["--set", "policy_node.models=checkpoints/calvin_effnet", "--set", "embedding_node.embedder.kind=random"],
     "embedding_node.embedder.kind"),
])
def test_real_arm_backend_refuses_untrained_models_and_the_random_embedder(args, names, tmp_path):
    proc = _dynaguide("launch", "real_arx5", "--set", "arx5_driver.backend=sdk", *args, "--duration", "1",
                      cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "refusing to drive the real arm" in proc.stderr and names in proc.stderr, proc.stderr
    assert "started" not in proc.stdout


def test_real_graph_dry_run_needs_no_hardware():
    """The documented dry run (sim arm backend, test-pattern camera, untrained models) passes the launcher's
    checks; with the real backend the same parameters are refused."""
    from dynaguide.config import ConfigError
    from dynaguide_ros.graphs import UNTRAINED_OVERRIDES
    from dynaguide_ros.launcher import GraphLauncher

    dry = {"camera_node": {"source": "test_pattern"}, **UNTRAINED_OVERRIDES}
    GraphLauncher("real_arx5", overrides=dry)  # no ConfigError
    with pytest.raises(ConfigError, match="policy_node.models"):
        GraphLauncher("real_arx5", overrides={**dry, "arx5_driver": {"backend": "sdk"}})


def test_sim_graph_runs_the_shipped_trained_models_from_any_directory(tmp_path):
    """`dynaguide launch calvin_sim` from a directory that is not the repo: the policy node loads the trained
    checkpoints (relative paths resolve under the repo, not the current directory)."""
    proc = subprocess.Popen([sys.executable, "-m", "dynaguide_cli", "launch", "calvin_sim", "--duration", "240"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ), start_new_session=True)
    lines: list[str] = []
    deadline = time.monotonic() + 240
    try:
        for line in proc.stdout:
            lines.append(line)
            if "policy node ready" in line or time.monotonic() > deadline:
                break
    finally:
        os.killpg(proc.pid, 2)
        try:   # keep reading while it shuts down: an unread pipe that fills would block the launcher's writes
            rest, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)   # never leave a graph running for the tests after this one
            rest, _ = proc.communicate()
            tail = ("".join(lines) + rest)[-3000:]
            raise AssertionError("the launcher did not stop within 60 s of SIGINT:\n" + tail) from None
        lines.append(rest or "")
    log = "".join(lines)
    assert "trained=True" in log and "UNTRAINED" not in log, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
