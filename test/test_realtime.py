"""Latency budget and wall-clock schedule (dynaguide.realtime_bench, ``dynaguide bench realtime``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dynaguide.chunk_execution import ActionSchedule
from dynaguide.realtime_bench import bench_graph, default_variants, load_graph_policy, simulate_wall_clock

ROOT = Path(__file__).resolve().parents[1]
DT = 1 / 30


@pytest.mark.parametrize("compute_s", [0.0, 0.05, 0.2, 0.26])
def test_compute_within_budget_never_leaves_the_robot_without_an_action(compute_s):
    sim = simulate_wall_clock([compute_s], horizon=16, action_dt=DT, replan_period_s=8 * DT, chunks=20)
    assert sim.held == 0 and sim.dropped_fraction == 0.0
    assert sim.executed_index_max < 16
    # the chunk's first steps were computed away: about compute / dt of them per chunk
    assert sim.stale_on_arrival <= 20 * (round(compute_s / DT) + 1)


@pytest.mark.parametrize("compute_s", [0.3, 0.5])
def test_compute_over_budget_starves_the_robot(compute_s):
    sim = simulate_wall_clock([compute_s], horizon=16, action_dt=DT, replan_period_s=8 * DT, chunks=20)
    assert sim.dropped_fraction > 0.05


def test_one_slow_chunk_in_ten_costs_a_few_ticks():
    sim = simulate_wall_clock([0.2] * 9 + [0.4], horizon=16, action_dt=DT, replan_period_s=8 * DT, chunks=40)
    assert 0 < sim.dropped_fraction < 0.2


def test_simulate_rejects_bad_inputs():
    with pytest.raises(ValueError):
        simulate_wall_clock([], horizon=16, action_dt=DT, replan_period_s=0.2)
    with pytest.raises(ValueError):
        simulate_wall_clock([float("nan")], horizon=16, action_dt=DT, replan_period_s=0.2)


def test_schedule_does_not_queue_actions_already_due_on_arrival():
    schedule = ActionSchedule(1, DT)
    schedule.add_chunk(np.arange(16.0)[:, None], stamp=0.0, dt=DT, now=5 * DT)  # arrived 5 steps late
    assert schedule.stats.stale_on_arrival == 4  # steps 1..4 were due before it arrived (step 5 is due now)
    assert schedule.next_action(5 * DT)[0] == 4.0  # action i is due at (i + 1) dt
    assert schedule.stats.dropped_late == 0


@pytest.mark.parametrize("name", ["calvin_sim", "real_arx5"])
def test_graph_files_give_the_policy_node_settings(name):
    settings = load_graph_policy(ROOT / "config" / f"{name}.yaml")
    assert settings.action_dt > 0 and settings.replan_period_s > 0 and min(settings.camera_sizes.values()) > 0
    if name == "calvin_sim":
        assert (settings.runner.embed_tokens, settings.runner.embed_dim) == (64, 112)
        # each camera at the size the graph publishes it (the shipped models were trained on these)
        assert settings.camera_sizes == {"rgb_static": 96, "rgb_gripper": 84}
        assert settings.runner.policy_checkpoint.endswith("calvin_play_gripper/policy")  # trained by default
    with_ckpt = load_graph_policy(ROOT / "config" / f"{name}.yaml", checkpoints="ckpt")
    assert with_ckpt.runner.policy_checkpoint == str(Path("ckpt") / "policy")


def test_bench_reports_budget_and_exact_variants_match(tmp_path):
    settings = load_graph_policy(ROOT / "config" / "calvin_sim.yaml")  # the shipped trained models
    settings.camera_sizes = {"rgb_static": 64, "rgb_gripper": 48}
    # the other torch thread count is left out: on a loaded 2-core machine it alone took a minute here
    variants = [v for v in default_variants(False, 1) if not v.name.startswith("torch_threads")]
    entry = bench_graph(settings, chunks=2, goals=3, warmup=1, variants=variants)
    assert entry["budget_ms"] == pytest.approx(8 / 30 * 1e3, abs=0.2)
    assert entry["settings"]["camera_px"] == {"rgb_static": 64, "rgb_gripper": 48}   # each camera at its own size
    assert set(entry) >= {"p50_ms", "p95_ms", "budget_ms", "keeps_up", "dropped_fraction", "settings", "variants"}
    exact = [row for name, row in entry["variants"].items() if row["exact"] and name != "configured"]
    assert exact and all(row["max_abs_diff_vs_configured"] <= 1e-5 for row in exact)
    assert entry["keeps_up"] == (entry["p95_ms"] <= entry["budget_ms"] and entry["dropped_fraction"] < 0.01)
    # the conditioning reuse is an exact speed-up: bit for bit the chunk of the code that recomputes it
    assert entry["variants"]["before: conditioning per call"]["max_abs_diff_vs_configured"] == 0.0
    rtc = {name: row for name, row in entry["variants"].items() if row["rtc"] is not None}
    assert {row["rtc"]["jacobian"] for row in rtc.values()} == {True, False}
    assert not any(row["exact"] for row in rtc.values())         # another chunk by design
    # execution horizons: budget P dt without RTC, (T - o - P) dt with it, capped at (T - o) dt / 2
    replays = entry["execution_horizon"]["replays"]
    assert entry["execution_horizon"]["configured_steps"] == 8 and set(replays) >= {"6", "8", "10"}
    assert replays["8"]["budget_ms"] == replays["8"]["rtc_budget_ms"] == pytest.approx(266.7, abs=0.1)
    assert (replays["10"]["budget_ms"], replays["10"]["rtc_budget_ms"]) == pytest.approx((333.3, 200.0), abs=0.1)
    assert replays["6"]["rtc_budget_ms"] == pytest.approx(266.7, abs=0.1)     # back to back: at most T dt / 2
    assert len(entry["settings"]["load_avg_before"]) == 3
    json.dumps(entry)  # JSON-serialisable as written by --json


def test_commit_steps_queues_only_the_committed_actions():
    schedule = ActionSchedule(1, DT)
    schedule.add_chunk(np.arange(16.0)[:, None], stamp=0.0, dt=DT, now=0.0, commit_steps=8)
    assert len(schedule) == 8
    executed = [schedule.next_action((i + 1) * DT) for i in range(9)]
    assert [a[0] for a in executed[:8]] == list(range(8)) and executed[8] is None  # then: wait for the policy
    with pytest.raises(ValueError, match="commit_steps"):
        schedule.add_chunk(np.zeros((16, 1)), stamp=1.0, dt=DT, commit_steps=-1)
