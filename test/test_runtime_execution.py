"""ROS-free pieces the nodes wrap: action schedule, guidance store, runner, typed parameters."""

from __future__ import annotations

import numpy as np
import pytest

from dynaguide.chunk_execution import ActionSchedule


def test_schedule_times_late_drop_replacement_and_hold():
    s = ActionSchedule(action_dim=2, control_dt=0.1)
    chunk = np.arange(10, dtype=float).reshape(5, 2)          # actions 0..4, start_index 1
    s.add_chunk(chunk, stamp=10.0, dt=0.1, start_index=1)     # action i at 10.0 + i*0.1
    assert s.next_action(9.9) is None                         # nothing due yet: hold
    assert np.array_equal(s.next_action(10.1), chunk[1])
    # at 10.33 the action for 10.2 is late (> half a period) and dropped; the one for 10.3 is due
    assert np.array_equal(s.next_action(10.33), chunk[3])
    assert s.stats.dropped_late == 1
    newer = np.full((3, 2), 7.0)
    s.add_chunk(newer, stamp=10.35, dt=0.1, start_index=0)    # replaces everything from 10.45 on
    assert np.array_equal(s.next_action(10.47), newer[0])       # 10.4 (old chunk) dropped as late
    assert s.stats.dropped_late == 2 and len(s) == 2


@pytest.mark.parametrize("bad, stamp, dt, start, match", [
    (np.full((3, 2), np.nan), 20.0, 0.1, 0, "NaN"),
    (np.zeros((3, 3)), 20.0, 0.1, 0, "chunk must be"),
    (np.zeros((3, 2)), 20.0, 0.0, 0, "dt"),
    (np.zeros((3, 2)), 20.0, 0.1, 3, "start_index"),
    (np.zeros((3, 2)), 5.0, 0.1, 0, "not newer"),
])
def test_schedule_rejects_bad_chunks_and_keeps_the_plan(bad, stamp, dt, start, match):
    s = ActionSchedule(2, 0.1)
    s.add_chunk(np.ones((4, 2)), stamp=10.0, dt=0.1)
    with pytest.raises(ValueError, match=match):
        s.add_chunk(bad, stamp=stamp, dt=dt, start_index=start)
    assert len(s) == 4 and s.stats.rejected == 1


def test_guidance_store_round_trip(tmp_path):
    from dynaguide.guidance.store import StoredGuidance, clear_guidance, load_guidance, save_guidance

    rng = np.random.default_rng(0)
    g = StoredGuidance(rng.standard_normal((2, 4, 3)).astype(np.float32), np.zeros((0, 4, 3), np.float32),
                       (2, 2), "random:abc", 1.5, 30.0, 4, 7)
    assert load_guidance(tmp_path) is None
    save_guidance(tmp_path, g)
    back = load_guidance(tmp_path)
    assert np.array_equal(back.positive, g.positive) and back.negative.shape == (0, 4, 3)
    assert (back.grid_hw, back.embedder_id, back.scale, back.sigma, back.stochastic_steps, back.revision) == \
        ((2, 2), "random:abc", 1.5, 30.0, 4, 7)
    (tmp_path / "guidance.json").write_text("{not json")
    with pytest.raises(ValueError, match="unreadable"):
        load_guidance(tmp_path)
    clear_guidance(tmp_path)
    assert load_guidance(tmp_path) is None


def test_runner_guidance_keeps_previous_on_bad_tokens_and_scale_zero_equals_unguided():
    import torch

    from dynaguide.guided_runner import GuidedPolicyRunner, RunnerConfig

    runner = GuidedPolicyRunner.from_config(RunnerConfig(embed_tokens=16, embed_dim=8))
    assert not runner.trained
    rng = np.random.default_rng(0)
    images = {"rgb_static": rng.integers(0, 256, (2, 48, 48, 3), dtype=np.uint8)}
    proprio = rng.standard_normal((2, 15)).astype(np.float32)
    tokens = rng.standard_normal((16, 8)).astype(np.float32)
    g = runner.set_guidance_tokens(rng.standard_normal((2, 16, 8)), None,
                                   runner.guidance_defaults.retuned(scale=2.0, stochastic_steps=1))
    assert g.scale == 2.0 and g.stochastic_steps == 1 and g.sigma == runner.guidance_defaults.sigma
    with pytest.raises(ValueError, match="goal tokens must be"):
        runner.set_guidance_tokens(rng.standard_normal((2, 9, 8)), None)
    assert runner.guidance is g                                   # previous guidance still in force
    runner.generator.manual_seed(3)
    guided = runner.act(images, proprio, tokens)
    assert guided.guided and np.isfinite(guided.metric) and guided.actions.shape == (16, 7)
    runner.clear_guidance()
    runner.generator.manual_seed(3)
    plain = runner.act(images, proprio, None)
    assert not plain.guided and np.isnan(plain.metric)
    assert not np.allclose(plain.actions, guided.actions)        # guidance changed the chunk
    runner.set_guidance_tokens(rng.standard_normal((1, 16, 8)), None,
                               runner.guidance_defaults.retuned(stochastic_steps=1))
    runner.guidance.config.scale = 0.0                            # s = 0: the unguided sampler, bit for bit
    runner.generator.manual_seed(3)
    zero = runner.act(images, proprio, tokens)
    assert np.array_equal(zero.actions, plain.actions)
    with pytest.raises(ValueError, match="missing camera"):
        runner.act({}, proprio, None)
    del torch


def test_rtc_chunk_takes_over_after_its_frozen_actions_and_the_previous_plan_runs_through_the_delay():
    """frozen_steps: the new chunk's first actions were constrained to the previous chunk's at the same times;
    the previous chunk's queued actions run on through them and the switch is at the first free action.  Where
    nothing is queued any more, the frozen actions are used rather than holding."""
    s = ActionSchedule(action_dim=1, control_dt=0.1)
    s.add_chunk(np.arange(8.0)[:, None], stamp=0.0, dt=0.1, now=0.0)            # previous: 0..7 at 0.1..0.8
    new = 100.0 + np.arange(8.0)[:, None]                                          # new: 100.. at 0.3..1.0
    s.add_chunk(new, stamp=0.2, dt=0.1, now=0.25, frozen_steps=3)                  # frozen: 100, 101, 102
    executed = [s.next_action(0.1 * (i + 1))[0] for i in range(10)]
    assert executed == [0, 1, 2, 3, 4, 103, 104, 105, 106, 107]
    assert s.stats.kept_previous == 3

    naive = ActionSchedule(action_dim=1, control_dt=0.1)                          # frozen_steps = 0: as before
    naive.add_chunk(np.arange(8.0)[:, None], stamp=0.0, dt=0.1, now=0.0)
    naive.add_chunk(new, stamp=0.2, dt=0.1, now=0.25)
    assert [naive.next_action(0.1 * (i + 1))[0] for i in range(10)] == [0, 1, 100, 101, 102, 103, 104, 105, 106, 107]

    short = ActionSchedule(action_dim=1, control_dt=0.1)                          # previous plan ends at 0.4
    short.add_chunk(np.arange(4.0)[:, None], stamp=0.0, dt=0.1, now=0.0)
    short.add_chunk(new, stamp=0.2, dt=0.1, now=0.25, frozen_steps=3)
    assert [short.next_action(0.1 * (i + 1))[0] for i in range(6)] == [0, 1, 2, 3, 102, 103]
    assert short.stats.kept_previous == 2 and short.stats.held == 0


@pytest.mark.parametrize("frozen", [-1, 6, 2.5])
def test_frozen_steps_outside_the_chunk_are_refused_with_one_line(frozen):
    s = ActionSchedule(action_dim=1, control_dt=0.1)
    with pytest.raises(ValueError, match=r"frozen_steps .* outside \[0, 5\]"):
        s.add_chunk(np.zeros((6, 1)), stamp=1.0, dt=0.1, start_index=1, frozen_steps=frozen)
    assert s.stats.rejected == 1 and len(s) == 0
