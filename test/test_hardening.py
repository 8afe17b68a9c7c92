"""Hardening, the ROS-free half: future stamps, the guidance store, σ limits and fallback, one source of
guidance defaults, the launcher's restart budget, bounded echoes, no deprecated ``Logger.warn``.

The same bugs over real DDS between real processes: ``test_ros_hardening.py``.
"""

from __future__ import annotations

import io
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from dynaguide.execution import ActionSchedule, check_chunk_stamp

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("dynaguide", "calvin_bridge", "dynaguide_experiments", "dynaguide_ros", "dynaguide_cli", "arx5_driver")


# ------------------------------------------------------------------------------- 1. Logger.warn
def test_no_deprecated_logger_warn_anywhere():
    """rclpy Kilted's ``Logger.warn`` is a deprecated wrapper: every ``.warn(`` of a process shares one
    call site for throttling, and two different throttle arguments kill the node (ValueError)."""
    pattern = re.compile(r"(get_logger\(\)|logger|_log)\.warn" + r"\(")  # split: this file does not match
    offenders = [f"{path.relative_to(REPO)}:{i}" for pkg in PACKAGES + ("test", "launch")
                 for path in sorted((REPO / pkg).rglob("*.py"))
                 for i, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert not offenders, f"use .warning(...), not .warn(...): {offenders}"


# ------------------------------------------------------------------------------- 2. future stamps
@pytest.mark.parametrize("clock, stamp", [
    (1000.0, 1005.0),                        # lockstep: sim time + 5 s
    (1.7e9, float(2**31 - 1)),               # wall clock: sec = 2^31 - 1
])
def test_schedule_rejects_future_stamps_and_keeps_accepting_current_ones(clock, stamp):
    s = ActionSchedule(2, 0.1, max_future_s=0.1)
    with pytest.raises(ValueError, match="in the future"):
        s.add_chunk(np.ones((4, 2)), stamp=stamp, dt=0.1, now=clock)
    assert len(s) == 0 and s.stats.rejected == 1
    s.add_chunk(np.ones((4, 2)), stamp=clock, dt=0.1, now=clock)     # not "not newer than" the future one
    assert len(s) == 4
    assert s.next_action(clock + 0.1) is not None                      # the world moves on
    s.add_chunk(np.ones((4, 2)), stamp=clock + 0.05, dt=0.1, now=clock)  # within max_future_s: fine


def test_stamp_rule_is_shared_and_names_the_reason():
    check_chunk_stamp(10.0, 10.0, 9.0)
    check_chunk_stamp(10.05, 10.0, 9.0)
    with pytest.raises(ValueError, match="not newer"):
        check_chunk_stamp(9.0, 10.0, 9.0)
    with pytest.raises(ValueError, match="not finite"):
        check_chunk_stamp(float("nan"), 10.0, 9.0)
    with pytest.raises(ValueError, match=r"0\.500 s in the future"):
        check_chunk_stamp(10.5, 10.0, 9.0)
    check_chunk_stamp(1e12, None, 9.0)  # no clock: only the order is checked (as before)


# ------------------------------------------------------------------------------- 5./7. the store
def _stored(rev: int, seed: int = 0):
    from dynaguide.guidance.store import StoredGuidance

    rng = np.random.default_rng(seed)
    return StoredGuidance(rng.standard_normal((2, 4, 3)).astype(np.float32), np.zeros((0, 4, 3), np.float32),
                          (2, 2), "random:abc", 1.5, 30.0, 4, rev)


def _corrupt_tensors(d: Path) -> None:
    name = json.loads((d / "guidance.json").read_text())["tensors"]
    (d / name).write_bytes(b"\xff" * 64)


def _truncate_tensors(d: Path) -> None:
    name = json.loads((d / "guidance.json").read_text())["tensors"]
    data = (d / name).read_bytes()
    (d / name).write_bytes(data[: len(data) // 2])


def _corrupt_json(d: Path) -> None:
    (d / "guidance.json").write_text("{not json")


def _delete_tensors(d: Path) -> None:
    for f in d.glob("guidance*.safetensors"):
        f.unlink()


@pytest.mark.parametrize("corrupt", [_corrupt_tensors, _truncate_tensors, _corrupt_json, _delete_tensors],
                         ids=["garbage_safetensors", "truncated_safetensors", "garbage_json", "missing_tensors"])
def test_corrupt_store_raises_value_error_and_keeps_the_revision(tmp_path, corrupt):
    from dynaguide.guidance.store import load_guidance, save_guidance, stored_revision

    save_guidance(tmp_path, _stored(7))
    corrupt(tmp_path)
    with pytest.raises(ValueError, match="unreadable"):  # SafetensorError is no ValueError: wrapped
        load_guidance(tmp_path)
    assert stored_revision(tmp_path) == 7                 # from the JSON, or the tensor file's name


def test_store_replaces_atomically_and_leaves_one_consistent_pair(tmp_path):
    from dynaguide.guidance.store import load_guidance, save_guidance

    for rev in (1, 2, 3):
        save_guidance(tmp_path, _stored(rev, seed=rev))
    files = sorted(f.name for f in tmp_path.iterdir())
    assert files[0] == "guidance-r3-" + files[0].split("-", 2)[2] and files[1:] == ["guidance.json"], files
    back = load_guidance(tmp_path)
    assert back.revision == 3 and np.array_equal(back.positive, _stored(3, seed=3).positive)
    meta = json.loads((tmp_path / "guidance.json").read_text())
    assert meta["tensors"] == files[0] and len(meta["sha256"]) == 64


def test_store_reads_the_previous_layout(tmp_path):
    """Stores written before the tensor file was named in the JSON (guidance.safetensors) still load."""
    from safetensors.numpy import save_file

    from dynaguide.guidance.store import load_guidance

    g = _stored(5)
    save_file({"positive": g.positive, "negative": g.negative}, str(tmp_path / "guidance.safetensors"))
    (tmp_path / "guidance.json").write_text(json.dumps({"grid_hw": [2, 2], "embedder_id": "random:abc",
                                                        "scale": 1.5, "sigma": 30.0, "stochastic_steps": 4,
                                                        "revision": 5}))
    assert load_guidance(tmp_path).revision == 5


def test_clear_is_recorded_so_revisions_never_repeat(tmp_path):
    from dynaguide.guidance.store import clear_guidance, load_guidance, save_guidance, stored_revision

    save_guidance(tmp_path, _stored(4))
    clear_guidance(tmp_path, revision=5)
    assert load_guidance(tmp_path) is None
    assert stored_revision(tmp_path) == 5
    assert not list(tmp_path.glob("*.safetensors"))


# ------------------------------------------------------------------------------- 6. σ and s
@pytest.mark.parametrize("sigma", [1e-45, 1e-9, 0.0, float("nan"), -1.0])
def test_guidance_config_rejects_unusable_sigma(sigma):
    from dynaguide.guidance.goals import GuidanceConfig

    with pytest.raises(ValueError, match="sigma"):
        GuidanceConfig(sigma=sigma)


@pytest.fixture(scope="module")
def runner_and_inputs():
    from dynaguide.runtime import GuidedPolicyRunner, RunnerConfig

    runner = GuidedPolicyRunner.from_config(RunnerConfig(embed_tokens=16, embed_dim=8))
    rng = np.random.default_rng(0)
    images = {"rgb_static": rng.integers(0, 256, (2, 48, 48, 3), dtype=np.uint8)}
    proprio = rng.standard_normal((2, 15)).astype(np.float32)
    tokens = rng.standard_normal((16, 8)).astype(np.float32)
    return runner, images, proprio, tokens


def test_runner_refuses_unusable_sigma_and_keeps_the_previous_guidance(runner_and_inputs):
    runner, *_ = runner_and_inputs
    rng = np.random.default_rng(1)
    g = runner.set_guidance_tokens(rng.standard_normal((1, 16, 8)), None,
                                   runner.guidance_defaults.retuned(stochastic_steps=1))
    with pytest.raises(ValueError, match="sigma"):
        runner.set_guidance_tokens(rng.standard_normal((1, 16, 8)), None, runner.guidance_defaults.retuned(sigma=1e-45))
    assert runner.guidance is g


@pytest.mark.parametrize("break_guidance", ["sigma_bypassing_validation", "overflowing_goals"])
def test_runner_falls_back_to_the_base_policy_when_guidance_is_not_finite(runner_and_inputs, break_guidance):
    runner, images, proprio, tokens = runner_and_inputs
    rng = np.random.default_rng(2)
    if break_guidance == "sigma_bypassing_validation":
        runner.set_guidance_tokens(rng.standard_normal((1, 16, 8)), None,
                                   runner.guidance_defaults.retuned(stochastic_steps=1))
        runner.guidance.config.sigma = 1e-45
    else:  # finite goals whose distances overflow float32
        runner.set_guidance_tokens(np.full((1, 16, 8), 1e30), None,
                                   runner.guidance_defaults.retuned(stochastic_steps=1))
    result = runner.act(images, proprio, tokens)
    assert not result.guided and "fell back" in result.fallback and "not finite" in result.fallback
    assert np.isfinite(result.actions).all() and np.isnan(result.metric)
    runner.set_guidance_tokens(rng.standard_normal((1, 16, 8)), None,
                               runner.guidance_defaults.retuned(sigma=5.0, stochastic_steps=1))
    ok = runner.act(images, proprio, tokens)
    assert ok.guided and ok.fallback == "" and np.isfinite(ok.metric)


def test_scale_zero_is_expressible(runner_and_inputs):
    runner, images, proprio, tokens = runner_and_inputs
    g = runner.set_guidance_tokens(np.random.default_rng(3).standard_normal((1, 16, 8)), None,
                                   runner.guidance_defaults.retuned(scale=0.0))
    assert g.scale == 0.0                                    # not mapped to the default any more
    assert not runner.act(images, proprio, tokens).guided   # s = 0: the unguided sampler
    with pytest.raises(ValueError, match="scale"):
        runner.set_guidance_tokens(np.zeros((1, 16, 8)), None, runner.guidance_defaults.retuned(scale=-1.0))


# ------------------------------------------------------------------------------- defaults: one source
def _yaml(name: str) -> dict:
    return yaml.safe_load((REPO / "config" / name).read_text())


def _parse(register, *argv):
    import argparse

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return parser.parse_args(list(argv))


def test_guidance_defaults_have_one_source():
    from dynaguide_cli.bench import register as bench_register
    from dynaguide.guidance.goals import GuidanceConfig
    from dynaguide_ros.guidance_manager_node import GuidanceManagerConfig

    g = GuidanceConfig()
    assert g.stochastic_mode == "renoise"
    m = GuidanceManagerConfig()
    assert (m.default_scale, m.default_sigma, m.default_stochastic_steps) == (g.scale, g.sigma, g.stochastic_steps)
    bench = _parse(bench_register, "bench", "guidance")
    assert (bench.scale, bench.sigma, bench.stochastic_steps) == (g.scale, g.sigma, g.stochastic_steps)
    for name in ("calvin_sim.yaml", "real_arx5.yaml"):  # no second copy of the defaults in the graphs' YAML
        params = {k: v for node in _yaml(name).values() for k, v in node["ros__parameters"].items()}
        duplicated = {"default_scale", "default_sigma", "default_stochastic_steps", "runner.guidance.scale",
                      "runner.guidance.sigma", "runner.guidance.stochastic_steps"} & set(params)
        assert not duplicated, f"{name} repeats guidance defaults: {duplicated}"
        assert params.get("runner.guidance.stochastic_mode", g.stochastic_mode) == "renoise", name


def test_demo_sends_the_managers_defaults_unless_told():
    from dynaguide_cli.ros import register_demo as register

    args = _parse(register, "demo")
    # no scale (None) and 0 for sigma/M keep the manager's values, i.e. GuidanceConfig's; --scale 0 means s = 0
    assert (args.scale, args.sigma, args.stochastic_steps) == (None, 0.0, 0)
    assert _parse(register, "demo", "--scale", "0").scale == 0.0


# ------------------------------------------------------------------------------- 8. launcher budget
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


# ------------------------------------------------------------------------------- 10. bounded echoes
def test_client_strings_are_cut_before_they_are_echoed():
    from dynaguide.text import clip_text, short_repr

    assert short_repr("rgb16") == "'rgb16'" and clip_text("abc") == "abc"
    huge = "x" * 1_000_000
    assert len(short_repr(huge)) < 100 and "1000000 chars" in short_repr(huge)
    assert len(clip_text(huge, 10)) < 40


def test_conversion_and_executor_errors_do_not_echo_megabytes():
    from sensor_msgs.msg import Image

    from arx5_driver.chunk_executor import ActionChunk, ChunkExecutor
    from dynaguide_ros.conversions import MessageError, rgb_from_image_msg

    huge = "e" * 1_000_000
    with pytest.raises(MessageError) as exc:
        rgb_from_image_msg(Image(height=2, width=2, encoding=huge, step=6, data=bytes(12)))
    assert len(str(exc.value)) < 300
    executor = ChunkExecutor.__new__(ChunkExecutor)  # only the frame check: no kinematics needed
    executor.base_frame, executor.tool_frame = "base_link", "eef_link"
    with pytest.raises(ValueError) as exc:
        executor._ee_delta_to_joints(np.zeros((1, 7)), np.zeros(6), "f" * 1_000_000)
    assert len(str(exc.value)) < 300
    del ActionChunk


# ------------------------------------------------------------------------------- 9. clean SIGINT
STUCK_NODE = """
import os, signal, threading, time
from dynaguide_ros.node_main import spin_node

def make():
    from rclpy.callback_groups import ReentrantCallbackGroup
    from rclpy.node import Node
    node = Node("stuck_callback_node")
    node.create_timer(0.1, lambda: time.sleep(3600), callback_group=ReentrantCallbackGroup())
    threading.Timer(1.5, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
    return node

raise SystemExit(spin_node(make, [], threads=2))
"""


@pytest.mark.ros
def test_sigint_ends_a_node_even_when_a_callback_is_stuck(tmp_path):
    """spin_node: a callback thread that never returns must not keep the process alive after SIGINT."""
    import os
    import subprocess
    import time

    from dynaguide_ros.node_main import EXIT_GRACE_S

    assert os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE") == "LOCALHOST"
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", STUCK_NODE], capture_output=True, text=True, cwd=REPO,
                          env=dict(os.environ), timeout=120)
    took = time.monotonic() - t0
    assert proc.returncode == 1 and "shutdown did not finish" in proc.stderr, (proc.returncode, proc.stderr[-2000:])
    assert took < 1.5 + EXIT_GRACE_S + 30, took  # start-up (imports) + SIGINT at 1.5 s + grace
