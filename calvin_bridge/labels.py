"""Behaviour labels (as the DynaGuide paper's CALVIN evaluation) and cheap CALVIN task checks.

``scene_obs`` (24) layout, CALVIN's: ``[door, drawer, button, switch, lightbulb, green_led,
red xyz, red euler, blue xyz, blue euler, pink xyz, pink euler]`` (m, rad, lights 0/1).
"""

from __future__ import annotations

import numpy as np

DOOR, DRAWER, BUTTON, SWITCH, LIGHTBULB, LED = range(6)
BLOCK_SLICES = {"red": slice(6, 12), "blue": slice(12, 18), "pink": slice(18, 24)}
#: order in which the paper's labeller checks the blocks
BLOCK_CHECK_ORDER = ("red", "pink", "blue")

#: every label :func:`behaviour_label` can return
LABELS = ("touch_red", "touch_pink", "touch_blue", "door_left", "door_right", "drawer_open", "drawer_close",
          "switch_on", "switch_off", "button_on", "button_off", "no_behaviour")

TOUCH_TCP_DISTANCE = 0.10
TOUCH_BLOCK_MOTION = 0.001
DOOR_MOTION = 0.05
DRAWER_MOTION = 0.05
SWITCH_MOTION = 0.02
LED_CHANGE = 0.01


def _check(scene_obs: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(scene_obs, dtype=np.float64)
    if arr.shape != (24,):
        raise ValueError(f"{name} must have shape (24,), got {arr.shape}")
    return arr


def block_position(scene_obs: np.ndarray, colour: str) -> np.ndarray:
    """Block ``colour`` position (3,) in metres."""
    return np.asarray(scene_obs)[BLOCK_SLICES[colour]][:3]


def behaviour_label(first_scene_obs: np.ndarray, scene_obs: np.ndarray, tcp_position: np.ndarray) -> str:
    """Label the change from ``first_scene_obs`` to ``scene_obs`` as the paper's evaluation does.

    Checked in order: blocks red, pink, blue (displaced when the TCP is within 0.10 m of the block and
    the block moved > 0.001 m); sliding door moved > 0.05 (left if it increased); drawer > 0.05 (open
    if it increased); switch > 0.02 (on if increased); green LED changed > 0.01 (button on if it
    increased).  Nothing fired → ``"no_behaviour"``.
    """
    first = _check(first_scene_obs, "first_scene_obs")
    now = _check(scene_obs, "scene_obs")
    tcp = np.asarray(tcp_position, dtype=np.float64).reshape(3)
    for colour in BLOCK_CHECK_ORDER:
        pos_now, pos_first = block_position(now, colour), block_position(first, colour)
        if (np.linalg.norm(tcp - pos_now) < TOUCH_TCP_DISTANCE
                and np.linalg.norm(pos_now - pos_first) > TOUCH_BLOCK_MOTION):
            return f"touch_{colour}"
    for index, threshold, up, down in ((DOOR, DOOR_MOTION, "door_left", "door_right"),
                                       (DRAWER, DRAWER_MOTION, "drawer_open", "drawer_close"),
                                       (SWITCH, SWITCH_MOTION, "switch_on", "switch_off"),
                                       (LED, LED_CHANGE, "button_on", "button_off")):
        delta = now[index] - first[index]
        if abs(delta) > threshold:
            return up if delta > 0 else down
    return "no_behaviour"


def calvin_tasks(first_scene_obs: np.ndarray, scene_obs: np.ndarray) -> set[str]:
    """CALVIN task checks that are cheap on ``scene_obs`` alone (names as ``new_playtable_tasks.yaml``).

    Slider ±0.15 m, drawer ±0.12 m, lightbulb/LED toggles, block lifted by 0.05 m, block pushed ±0.1 m in x.
    """
    first = _check(first_scene_obs, "first_scene_obs")
    now = _check(scene_obs, "scene_obs")
    done: set[str] = set()
    d = now - first
    if d[DOOR] > 0.15:
        done.add("move_slider_left")
    if d[DOOR] < -0.15:
        done.add("move_slider_right")
    if d[DRAWER] > 0.12:
        done.add("open_drawer")
    if d[DRAWER] < -0.12:
        done.add("close_drawer")
    for light, name in ((LIGHTBULB, "lightbulb"), (LED, "led")):
        if first[light] < 0.5 <= now[light]:
            done.add(f"turn_on_{name}")
        if first[light] >= 0.5 > now[light]:
            done.add(f"turn_off_{name}")
    for colour in BLOCK_SLICES:
        move = block_position(now, colour) - block_position(first, colour)
        if move[2] > 0.05:
            done.add(f"lift_{colour}_block")
        if move[0] > 0.1:
            done.add(f"push_{colour}_block_right")
        if move[0] < -0.1:
            done.add(f"push_{colour}_block_left")
    return done
