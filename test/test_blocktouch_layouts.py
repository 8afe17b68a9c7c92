"""Random reset and evaluation layouts: positions inside the stated jitter boxes, valid scenes."""

import numpy as np
import pytest

from dynaguide_experiments.blocktouch.layouts import LAYOUTS, MIN_PAIR_DISTANCE_PX, sample_layout, valid_scenes

N = 400


def _pairwise_min(scenes):
    pts = np.concatenate([scenes.agent[:, None], scenes.blocks], axis=1)
    d = np.linalg.norm(pts[:, :, None] - pts[:, None], axis=-1)
    d[:, np.arange(5), np.arange(5)] = np.inf
    return d.min()


def test_random_reset_integer_positions_and_spacing():
    s = sample_layout("random", np.random.default_rng(0), N)
    pts = np.concatenate([s.agent[:, None], s.blocks], axis=1)
    assert np.all(pts == np.round(pts)) and pts.min() >= 40 and pts.max() < 470
    assert _pairwise_min(s) >= MIN_PAIR_DISTANCE_PX
    assert np.all((s.yaw >= 0) & (s.yaw < np.pi / 2))
    assert np.bincount(s.target, minlength=4).tolist() == [N // 4] * 4


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_named_layout_within_jitter_boxes(name):
    spec = LAYOUTS[name]
    s = sample_layout(name, np.random.default_rng(1), N)
    for pts, box in [(s.agent, spec.agent)] + [(s.blocks[:, k], spec.blocks[k]) for k in range(4)]:
        assert np.all(np.abs(pts[:, 0] - box.cx) <= box.jx + 1e-9)
        assert np.all(np.abs(pts[:, 1] - box.cy) <= box.jy + 1e-9)
        if box.jx > 0:  # the jitter is actually used (spread over most of the box)
            assert np.ptp(pts[:, 0]) > box.jx
    assert valid_scenes(s.agent, s.blocks).all()
    assert _pairwise_min(s) >= MIN_PAIR_DISTANCE_PX
    assert np.all(s.target == 0)  # blue


def test_paper_layout_facts():
    assert (LAYOUTS["late_decision"].blocks[0].cx, LAYOUTS["late_decision"].blocks[0].cy) == (100, 340)
    assert LAYOUTS["late_decision"].blocks[0].jy == 25 and LAYOUTS["late_decision"].blocks[0].jx == 0
    assert LAYOUTS["early_decision"].agent == type(LAYOUTS["early_decision"].agent)(255, 255, 70, 70)
    assert LAYOUTS["cube_blockade"].blocks[1].cx == 320  # red is the barrier between agent and blue
    s = sample_layout("cube_blockade", np.random.default_rng(2), N)
    assert np.all(s.agent[:, 0] > s.blocks[:, 0, 0])


def test_sampling_is_deterministic_and_validates_names():
    a = sample_layout("early_decision", np.random.default_rng(5), 10)
    b = sample_layout("early_decision", np.random.default_rng(5), 10)
    assert np.array_equal(a.blocks, b.blocks) and np.array_equal(a.yaw, b.yaw)
    with pytest.raises(ValueError, match="unknown layout"):
        sample_layout("nope", np.random.default_rng(0), 3)
    with pytest.raises(ValueError, match="positive"):
        sample_layout("random", np.random.default_rng(0), 0)
