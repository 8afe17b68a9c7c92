"""BlockTouch physics, touch/out-of-arena detection and rendering: known answers."""

import math

import numpy as np
import pytest

from dynaguide_experiments.blocktouch.env import (
    AGENT_RGB, BACKGROUND_RGB, COLOR_RGB, WALL_RGB, BlockTouchEnv, BlockTouchEnvConfig, action_to_px,
    circle_square_distance, out_of_arena, pd_substep, px_to_unit, render, render_static, touched_block)

CFG = BlockTouchEnvConfig(image_size=64, supersample=2)
FAR_BLOCKS = np.array([[[60.0, 60.0], [452.0, 60.0], [452.0, 452.0], [60.0, 452.0]]])


def test_action_pixel_mapping_is_the_papers():
    assert np.allclose(action_to_px(np.array([-1.0, 1.0])), [0.0, 512.0])
    assert np.allclose(action_to_px(np.array([0.0, 0.5])), [256.0, 384.0])
    assert np.allclose(px_to_unit(action_to_px(np.array([0.3, -0.7]))), [0.3, -0.7])


def test_pd_substep_known_answers():
    pos, vel = np.array([[100.0, 100.0]]), np.zeros((1, 2))
    # far target: 100 * 256 px is clipped to 1000 px/s^2 -> vel 10 px/s, pos += 0.1 px (semi-implicit Euler)
    p1, v1 = pd_substep(pos, vel, np.array([[356.0, 100.0]]), CFG)
    assert np.allclose(v1, [[10.0, 0.0]]) and np.allclose(p1, [[100.1, 100.0]])
    # near target: acc = 100 * 5 = 500 (not clipped), damping 20 * vel
    p2, v2 = pd_substep(pos, np.array([[0.0, 10.0]]), np.array([[105.0, 100.0]]), CFG)
    assert np.allclose(v2, [[5.0, 10.0 - 0.01 * 200.0]])
    assert np.allclose(p2, pos + v2 * 0.01)


def test_agent_converges_to_target_without_overshoot():
    env = BlockTouchEnv(CFG)
    env.reset_to(np.array([[150.0, 256.0]]), FAR_BLOCKS, np.zeros((1, 4)))
    target = np.array([[0.4, 0.0]])  # 358.4, 256 px
    xs = []
    for _ in range(40):
        env.step(target)
        xs.append(env.agent_pos[0, 0])
    assert not env.done[0]
    assert abs(xs[-1] - 358.4) < 0.5 and abs(env.agent_pos[0, 1] - 256.0) < 1e-9
    assert env.steps[0] == 40
    # a small step never saturates the ±1000 clip, and kd = 2 sqrt(kp) is critical damping: no overshoot
    env.reset_to(np.array([[150.0, 256.0]]), FAR_BLOCKS, np.zeros((1, 4)))
    small = px_to_unit(np.array([[155.0, 256.0]]))
    xs = []
    for _ in range(20):
        env.step(small)
        xs.append(env.agent_pos[0, 0])
    assert max(xs) <= 155.0 + 1e-9 and np.all(np.diff(xs) >= -1e-12) and abs(xs[-1] - 155.0) < 1e-3


def test_circle_square_distance_known_values():
    c = np.zeros(2)
    assert math.isclose(circle_square_distance(np.array([40.0, 0.0]), c, 0.0, 20.0), 20.0)
    assert math.isclose(circle_square_distance(np.array([10.0, -5.0]), c, 0.0, 20.0), 0.0)  # inside
    assert math.isclose(circle_square_distance(np.array([30.0, 30.0]), c, 0.0, 20.0), math.hypot(10, 10))
    # rotated by 45 deg: the corner points along +x at 20 * sqrt(2)
    assert math.isclose(circle_square_distance(np.array([20 * math.sqrt(2) + 20.0, 0.0]), c, math.pi / 4, 20.0),
                        20.0, abs_tol=1e-9)


def test_touch_detection_threshold_is_the_agent_radius():
    blocks = FAR_BLOCKS.copy()
    blocks[0, 2] = [300.0, 300.0]
    yaw = np.zeros((1, 4))
    assert touched_block(np.array([[340.0, 300.0]]), blocks, yaw, CFG)[0] == 2
    assert touched_block(np.array([[340.01, 300.0]]), blocks, yaw, CFG)[0] == -1
    yaw[0, 2] = math.pi / 4
    assert touched_block(np.array([[300 + 20 * math.sqrt(2) + 19.9, 300.0]]), blocks, yaw, CFG)[0] == 2
    assert touched_block(np.array([[300 + 20 * math.sqrt(2) + 20.1, 300.0]]), blocks, yaw, CFG)[0] == -1


def test_episode_ends_on_touch_and_freezes():
    blocks = FAR_BLOCKS.copy()
    blocks[0, 1] = [350.0, 256.0]  # red in the path
    env = BlockTouchEnv(CFG)
    env.reset_to(np.array([[150.0, 256.0]]), blocks, np.zeros((1, 4)))
    target = px_to_unit(np.array([[350.0, 256.0]]))
    for _ in range(30):
        result = env.step(target)
        if result.done[0]:
            break
    assert result.done[0] and result.touched[0] == 1 and not result.out[0]
    # contact = first physics step with gap <= 0: x >= 310 px, overlapping by less than one step (< 20 px)
    assert 310.0 <= env.agent_pos[0, 0] < 330.0
    frozen, steps = env.agent_pos.copy(), env.steps.copy()
    env.step(px_to_unit(np.array([[0.0, 0.0]])))
    assert np.array_equal(env.agent_pos, frozen) and np.array_equal(env.steps, steps)


def test_leaving_the_arena_ends_the_episode():
    env = BlockTouchEnv(CFG)
    env.reset_to(np.array([[256.0, 100.0]]), FAR_BLOCKS + np.array([0.0, 60.0]), np.zeros((1, 4)))
    for _ in range(30):
        r = env.step(np.array([[0.0, -1.0]]))  # target on the top wall
        if r.done[0]:
            break
    assert r.out[0] and r.touched[0] == -1
    assert env.agent_pos[0, 1] < CFG.agent_radius
    assert out_of_arena(np.array([[20.0, 256.0], [21.0, 256.0], [256.0, 492.5]]), CFG).tolist() == [False, False, True]


def test_inactive_arenas_do_not_move():
    env = BlockTouchEnv(CFG)
    env.reset_to(np.array([[150.0, 256.0], [150.0, 256.0]]), np.repeat(FAR_BLOCKS, 2, 0), np.zeros((2, 4)))
    env.step(np.array([[0.4, 0.0], [0.4, 0.0]]), active=np.array([True, False]))
    assert env.agent_pos[0, 0] > 150.0 and env.agent_pos[1, 0] == 150.0
    assert env.steps.tolist() == [1, 0]
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="NaN"):
        env.step(np.full((2, 2), np.nan))


def test_render_colours_and_layout():
    agent = np.array([[256.0, 128.0]])
    yaw = np.zeros((1, 4))
    img = render(agent, FAR_BLOCKS, yaw, CFG)[0]
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    s = 512 / 64
    assert np.array_equal(img[int(128 / s), int(256 / s)], AGENT_RGB)  # row = y, column = x
    for k in range(4):
        x, y = FAR_BLOCKS[0, k]
        assert np.array_equal(img[int(y / s), int(x / s)], COLOR_RGB[k])
    # the 6 px wall covers the sub-pixel row at y = 2 px but not y = 6 px: a 2-of-4 blend in the border row
    assert np.array_equal(img[0, 5], np.rint(0.5 * WALL_RGB + 0.5 * BACKGROUND_RGB).astype(np.uint8))
    assert np.array_equal(img[32, 40], BACKGROUND_RGB)
    obs_env = BlockTouchEnv(CFG)
    obs = obs_env.reset_to(agent, FAR_BLOCKS, yaw)
    assert np.array_equal(obs["image"][0], img)
    assert np.allclose(obs["proprio"], [[0.0, -0.5]])


def test_windowed_agent_compositing_matches_brute_force_supersampling():
    rng = np.random.default_rng(0)
    agent = rng.uniform(25, 487, size=(5, 2))
    agent[0] = [21.0, 490.0]  # near a corner: the window is clipped at the image border
    yaw = rng.uniform(0, np.pi / 2, size=(5, 4))
    blocks = np.repeat(FAR_BLOCKS, 5, 0)
    fast = render(agent, blocks, yaw, CFG).astype(np.float64)
    hi_cfg = BlockTouchEnvConfig(image_size=128, supersample=1)
    hi = render_static(blocks, yaw, hi_cfg).astype(np.float64)
    blocks_hi = hi.reshape(5, 64, 2, 64, 2, 3)
    uniform = np.all(blocks_hi == blocks_hi[:, :, :1, :, :1], axis=(2, 4, 5))  # static layer flat inside the pixel
    coords = (np.arange(128) + 0.5) * 4.0
    gx, gy = np.meshgrid(coords, coords)
    for b in range(5):
        mask = (gx - agent[b, 0]) ** 2 + (gy - agent[b, 1]) ** 2 <= 400.0
        hi[b][mask] = AGENT_RGB
    brute = hi.reshape(5, 64, 2, 64, 2, 3).mean(axis=(2, 4))
    # exact wherever the static layer is flat inside a pixel (the blend uses the pixel's mean static colour)
    assert np.abs(fast - np.rint(brute))[uniform].max() <= 1.0
    covered = np.any(np.abs(brute - render_static(blocks, yaw, CFG)) > 0, axis=-1)
    assert covered.sum() >= 5 * 20  # the agent disc (radius 2.5 px) really is drawn in every image
