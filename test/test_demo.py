"""``dynaguide demo``: guided and unguided runs of one seed from a held world, correct summaries, one figure,
and the same run again for the same seed (lockstep)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SIM_SECONDS = 1.0


def _demo(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dynaguide_cli", "demo", "--sim-seconds", str(SIM_SECONDS),
                           "--goals", "2", "--seed", "7", "--out", str(out), *extra],
                          capture_output=True, text=True, timeout=1200, env=dict(os.environ), cwd=out.parent)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo"
    proc = _demo(out, "--view-save", str(out.parent / "run.rrd"))   # also streams both runs to rerun files
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc


@pytest.mark.ros
@pytest.mark.timeout(900)
@pytest.mark.parametrize("mode", ["guided", "unguided"])
def test_each_run_starts_held_and_is_counted_from_its_first_action(demo_run, mode):
    out, proc = demo_run
    s = json.loads((out / mode / "summary.json").read_text())
    assert s["guided"] == (mode == "guided") and s["trained_models"] is True
    assert "world started at" in (out / mode / "graph.log").read_text()           # the world was held until then
    assert SIM_SECONDS <= s["sim_seconds"] < SIM_SECONDS + 0.5 and s["stopped_by"] == "sim_seconds", s
    # one frame per simulated step from the start frame on: republished frames of the paused world not counted
    assert abs(s["frames_recorded"] - (round(30 * SIM_SECONDS) + 1)) <= 1, s
    assert isinstance(s["target_reached"], bool) and isinstance(s["target_first"], bool)
    assert s["behaviour_target"] == "drawer_open"
    assert s["chunks"] >= 3 and s["guided_chunks"] == (s["chunks"] if mode == "guided" else 0), s
    assert s["compute_p95_ms"] is not None and np.isfinite(s["compute_p95_ms"]), s
    assert all(b["sim_time"] >= 0 for b in s["behaviours_detected"])
    assert f"[demo] {mode}: behaviours" in proc.stdout


@pytest.mark.ros
@pytest.mark.timeout(900)
def test_demo_writes_one_figure_and_a_joint_summary(demo_run):
    from PIL import Image

    out, proc = demo_run
    joint = json.loads((out / "summary.json").read_text())
    assert set(joint["runs"]) == {"guided", "unguided"} and joint["seed"] == 7
    w, h = Image.open(out / "demo.png").size
    assert w >= 8 * 96 and h >= 3 * 96  # goal row + two runs of native 96 px frames
    assert "demo.png" in proc.stdout


@pytest.mark.ros
@pytest.mark.timeout(900)
def test_the_same_seed_gives_the_same_run(demo_run):
    """Lockstep: a second guided run of the seed sees exactly the same frames."""
    out, _ = demo_run
    again = out.parent / "again"
    proc = _demo(again, "--guided-only")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    first, second = np.load(out / "guided" / "frames.npz"), np.load(again / "guided" / "frames.npz")
    n = min(len(first["frames"]), len(second["frames"]))
    assert n >= 30 and np.array_equal(first["frames"][:n], second["frames"][:n])


def test_figure_marks_the_frame_where_a_behaviour_fired(tmp_path):
    from PIL import Image

    from dynaguide_ros.demo import demo_figure

    times = np.arange(31) / 30
    grey = np.full((31, 32, 32, 3), 128, np.uint8)
    demo_figure([grey[0]] * 2, {"guided": (times, grey, [{"behaviour": "drawer_open", "sim_time": 0.5}]),
                                "unguided": (times, grey, [])}, tmp_path / "f.png", columns=4)
    img = np.asarray(Image.open(tmp_path / "f.png").convert("RGB")).astype(int)
    red = (img[..., 0] > 200) & (img[..., 1] < 60) & (img[..., 2] < 60)
    rows = np.nonzero(red.any(axis=1))[0]
    assert red.sum() > 100, "no red outline"
    unguided_row = img.shape[0] - 6 - (32 + 2 * 14 + 6)  # the last row (32 px frames): no behaviour, no outline
    assert rows.min() > 32 + 14 and rows.max() < unguided_row, rows


@pytest.mark.ros
@pytest.mark.timeout(900)
def test_demo_view_streams_each_run_to_rerun_with_the_guidance_signal(demo_run):
    """``--view-save``: each run's cameras, paths, goals, guidance signal and compute time, read back with rerun's
    reader; guidance pulls the predicted outcome towards the goal images (chunk nearer than the proposal)."""
    pytest.importorskip("rerun")
    from test_view import read_rrd, scalars

    out, proc = demo_run
    guided, unguided = (read_rrd(out.parent / f"run.{mode}.rrd") for mode in ("guided", "unguided"))
    s = json.loads((out / "guided" / "summary.json").read_text())
    for e in (guided, unguided):
        for camera in ("/camera/rgb_static", "/camera/rgb_gripper"):
            assert e[camera]["rows"] >= 30 * SIM_SECONDS, camera            # every simulated step, and the held frames
        assert e["/world/ee"]["rows"] >= 30 * SIM_SECONDS and e["/world/ee/trajectory"]["rows"] >= 2
        assert e["/world/plan"]["rows"] >= 3
        plan = e["/world/plan"]["columns"]["LineStrips3D:strips"][-1][0]
        ee = np.array([p for p in e["/world/ee"]["columns"]["Points3D:positions"] if p][-1][0])
        assert len(plan) >= 8 and np.linalg.norm(np.array(plan[0]) - ee) < 0.2   # the plan starts at the hand
        budget = scalars(e, "/compute/budget_ms")
        assert len(budget) >= 3 and budget[-1] == pytest.approx(s["budget_ms"], abs=0.1)
        assert all(np.isfinite(scalars(e, "/compute/compute_ms")))
    assert sorted(p for p in guided if p.startswith("/guidance/goals/")) == \
        ["/guidance/goals/positive/0", "/guidance/goals/positive/1"]
    proposal = scalars(guided, "/signal/positive_distance/proposal")
    chunk = scalars(guided, "/signal/positive_distance/chunk")
    assert len(chunk) == len(proposal) >= 3 and np.all(np.isfinite(chunk))
    assert np.mean(chunk) < np.mean(proposal), (proposal, chunk)        # guidance pulls towards the goals
    assert np.mean(scalars(guided, "/signal/metric/chunk")) > np.mean(scalars(guided, "/signal/metric/proposal"))
    assert "nearest positive" in guided["/signal/nearest_goal"]["columns"]["TextLog:text"][-1][0]
    assert scalars(unguided, "/signal/metric/chunk") == []          # no goals set: no guidance signal
    assert "rerun file" in proc.stdout
