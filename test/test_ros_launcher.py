"""The pip launcher: trained models by default from any directory, configuration mistakes as one clear line.

A node that cannot start with its configuration exits with ``EXIT_CONFIG`` and is not restarted (the bounded
restart budget for nodes that crash while running is covered in test_launcher_restarts.py); misspelt keys are refused
before anything starts; the real arm backend refuses untrained models and the random embedder.
"""

from __future__ import annotations

import io
import os
import re
import signal
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


#: a launcher with one light node (no torch), run as its own process: ``sys.argv[1]`` is the manager's state dir
ONE_NODE_LAUNCHER = """
import sys
from dynaguide_ros.graphs import GraphSpec, NodeSpec
from dynaguide_ros.launcher import GraphLauncher
spec = GraphSpec(params_files=("calvin_sim.yaml",), nodes=(NodeSpec("guidance_manager", "guidance_manager"),))
sys.exit(GraphLauncher(spec, overrides={"guidance_manager": {"state_dir": sys.argv[1]}}).run(duration=300))
"""


def _start_one_node_launcher(tmp_path: Path) -> tuple[subprocess.Popen, int, list[str]]:
    """Start it as a shell starts a background job (SIGINT ignored) and wait for the node; returns the launcher,
    the node's pid and the output lines so far."""
    proc = subprocess.Popen([sys.executable, "-c", ONE_NODE_LAUNCHER, str(tmp_path / "state")], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ),
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    lines: list[str] = []
    deadline = time.monotonic() + 120
    for line in proc.stdout:
        lines.append(line)
        if "guidance manager ready" in line or time.monotonic() > deadline:
            break
    started = re.search(r"started guidance_manager \(pid (\d+)\)", "".join(lines))
    if "guidance manager ready" not in "".join(lines) or started is None:
        proc.kill()
        raise AssertionError("the node did not start:\n" + "".join(lines)[-2000:])
    return proc, int(started.group(1)), lines


def _alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped counts as ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def _wait_ended(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    return not _alive(pid)


def test_launcher_stops_on_sigint_even_when_started_as_a_background_job(tmp_path):
    """A shell starts background jobs with SIGINT ignored (CI, `dynaguide launch ... &` in a script): Ctrl-C /
    SIGINT must still stop the launcher and its nodes."""
    proc, node_pid, lines = _start_one_node_launcher(tmp_path)
    try:
        os.kill(proc.pid, signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    log = "".join(lines) + rest
    assert proc.returncode == 0, log[-2000:]
    assert "shutting down" in log and "all nodes stopped" in log, log[-2000:]
    assert _wait_ended(node_pid, 10), f"node {node_pid} still running"


def test_nodes_end_when_the_launcher_is_killed(tmp_path):
    """SIGKILL gives the launcher no chance to stop its nodes (each in a session of its own): they must end by
    themselves, not keep a graph running on the machine."""
    proc, node_pid, _ = _start_one_node_launcher(tmp_path)
    try:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
        assert _wait_ended(node_pid, 30), f"node {node_pid} outlived its launcher"
    finally:
        if _alive(node_pid):
            os.kill(node_pid, signal.SIGKILL)


def test_a_node_interrupted_while_it_starts_exits_without_a_traceback(tmp_path):
    """The launcher's Ctrl-C can reach a node still importing (before rclpy's handlers exist, seconds on a busy
    machine): it ends quietly."""
    proc = subprocess.Popen([sys.executable, "-m", "dynaguide_ros.run_node", "guidance_manager", "--ros-args",
                             "-p", f"state_dir:={tmp_path / 'state'}"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=dict(os.environ),
                            # as the launcher starts its nodes: SIGINT not ignored, even if it is for pytest
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        time.sleep(0.2)                  # well inside the imports (rclpy alone takes longer)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:          # never leave the node running after a failure
            proc.kill()
            proc.communicate()
    assert proc.returncode in (130, 0), out[-2000:]
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out[-2000:]
