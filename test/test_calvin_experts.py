"""Scripted experts produce their labelled behaviour on the procedural table and on CALVIN scene D.

The default suite runs one seeded episode of a few behaviours per scene; ``-m slow`` runs every
behaviour.  The >= 50-episode success measurement is ``results/calvin/run_experts.sh``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from calvin_bridge.config import CalvinEnvConfig
from calvin_bridge.env import CalvinEnv
from calvin_bridge.experts import BEHAVIOURS, behaviour_scene, expected_label, run_episode

CALVIN_ASSETS = Path(__file__).resolve().parents[1].parent / "shared" / "calvin_assets"
FAST = ("switch_on", "drawer_open", "door_right", "button_on", "displace_blue")


def _config(kind: str) -> CalvinEnvConfig:
    if kind == "calvin_D":
        if not CALVIN_ASSETS.is_dir():
            pytest.skip(f"real CALVIN assets not present at {CALVIN_ASSETS}")
        return CalvinEnvConfig(calvin_data_dir=str(CALVIN_ASSETS), render_every_step=False)
    return CalvinEnvConfig(render_every_step=False)


@pytest.fixture(scope="module", params=["procedural", "calvin_D"])
def env(request):
    e = CalvinEnv(_config(request.param))
    yield e
    e.close()


def _check(env: CalvinEnv, behaviour: str, seed: int) -> None:
    first_labels = []
    result = run_episode(env, behaviour, seed, on_step=lambda o, a, info: first_labels.append(info["behaviour"]))
    assert result["label"] == expected_label(behaviour), result
    assert result["success"], result
    assert first_labels and first_labels[0] == "no_behaviour"      # the behaviour is produced, not preset
    assert first_labels[-1] == expected_label(behaviour)           # env's info agrees with the final label


@pytest.mark.parametrize("behaviour", FAST)
def test_fast_experts(env, behaviour):
    _check(env, behaviour, seed=11)


@pytest.mark.slow
@pytest.mark.parametrize("behaviour", [b for b in BEHAVIOURS if b not in FAST])
def test_all_experts(env, behaviour):
    _check(env, behaviour, seed=12)


def test_behaviour_scenes_meet_preconditions(env):
    rng = np.random.default_rng(0)
    for _ in range(5):
        assert behaviour_scene(env, "switch_on", rng)["switch"] < 0.044
        assert behaviour_scene(env, "switch_off", rng)["switch"] > 0.044
        assert behaviour_scene(env, "button_off", rng)["led"] == 1
        s = behaviour_scene(env, "touch_pink", rng)
        assert 0.0 <= s["block_pink"][0] <= 0.35 and -0.15 <= s["block_pink"][1] <= -0.03
    with pytest.raises(ValueError, match="unknown behaviour"):
        behaviour_scene(env, "fly", rng)


def test_experts_read_the_scene_not_fixed_coordinates(env):
    """The drawer expert's first contact target follows the drawer's current opening."""
    from calvin_bridge.experts import EXPERTS

    targets = []
    for drawer in (0.02, 0.08):
        env.reset(seed=3, options={"scene": {"drawer": drawer}})
        wps = list(EXPERTS["drawer_open"](env, np.random.default_rng(0)))
        targets.append(wps[3].position)      # the contact point in the handle's gap
    shift = targets[1] - targets[0]
    assert shift == pytest.approx([0.0, -0.06, 0.0], abs=2e-3)


def test_scenes_for_several_behaviours_make_each_one_possible(env):
    from calvin_bridge.experts import scene_for_behaviours

    rng = np.random.default_rng(1)
    lo, hi = env.scene.joint_limits["drawer"]
    for _ in range(5):
        s = scene_for_behaviours(env, ("switch_on", "drawer_open"), rng)
        assert s["switch"] < 0.044 and s["drawer"] <= lo + 0.45 * (hi - lo)
    assert set(scene_for_behaviours(env, (), rng)) == set(env.scene.random_state(np.random.default_rng(0)))


@pytest.mark.parametrize("behaviours", [("door_left", "door_right"), ("button_on", "button_off"),
                                        ("touch_red", "touch_blue")])
def test_scenes_refuse_behaviours_that_exclude_each_other(env, behaviours):
    from calvin_bridge.experts import scene_for_behaviours

    with pytest.raises(ValueError, match="cannot all be possible"):
        scene_for_behaviours(env, behaviours, np.random.default_rng(0))
