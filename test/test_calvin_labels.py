"""Behaviour labels and CALVIN task checks on hand-made scene_obs vectors (known answers)."""

import numpy as np
import pytest

from calvin_bridge.labels import behaviour_label, calvin_tasks


def scene(**kw):
    s = np.zeros(24)
    s[6:9] = [0.1, -0.1, 0.46]     # red
    s[12:15] = [0.3, -0.1, 0.46]   # blue
    s[18:21] = [-0.2, 0.1, 0.46]   # pink
    for k, v in kw.items():
        idx = {"door": 0, "drawer": 1, "button": 2, "switch": 3, "lightbulb": 4, "led": 5}[k]
        s[idx] = v
    return s


FAR = np.array([0.0, -0.4, 0.8])


@pytest.mark.parametrize("change,expected", [
    ({"door": 0.06}, "door_left"), ({"door": -0.06}, "door_right"), ({"door": 0.04}, "no_behaviour"),
    ({"drawer": 0.06}, "drawer_open"), ({"drawer": -0.051}, "drawer_close"), ({"drawer": 0.049}, "no_behaviour"),
    ({"switch": 0.021}, "switch_on"), ({"switch": -0.03}, "switch_off"), ({"switch": 0.019}, "no_behaviour"),
    ({"led": 1.0}, "button_on"), ({"led": -1.0}, "button_off"),
])
def test_articulation_labels(change, expected):
    first = scene(door=0.1, drawer=0.1, switch=0.04, led=0.5)
    now = first.copy()
    for k, v in change.items():
        now[{"door": 0, "drawer": 1, "switch": 3, "led": 5}[k]] += v
    assert behaviour_label(first, now, FAR) == expected


def test_block_needs_tcp_near_and_motion():
    first = scene()
    now = first.copy()
    now[6] += 0.002                                   # red moved 2 mm
    assert behaviour_label(first, now, now[6:9] + [0.0, 0.05, 0.0]) == "touch_red"
    assert behaviour_label(first, now, now[6:9] + [0.0, 0.15, 0.0]) == "no_behaviour"   # TCP too far
    still = first.copy()
    still[6] += 0.0005                                # below the 1 mm threshold
    assert behaviour_label(first, still, still[6:9]) == "no_behaviour"


def test_check_order_red_pink_blue_then_door():
    first = scene(door=0.1)
    now = first.copy()
    now[0] += 0.1                                     # door moved too
    for sl in (slice(6, 9), slice(12, 15), slice(18, 21)):
        now[sl] = [0.0, 0.0, 0.5]
        now[sl.start] += 0.01 * sl.start
    tcp = np.array([0.1, 0.0, 0.5])
    assert behaviour_label(first, now, tcp) == "touch_red"
    now[6:9] = first[6:9]
    assert behaviour_label(first, now, tcp) == "touch_pink"
    now[18:21] = first[18:21]
    assert behaviour_label(first, now, tcp) == "touch_blue"
    now[12:15] = first[12:15]
    assert behaviour_label(first, now, tcp) == "door_left"


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="shape"):
        behaviour_label(np.zeros(23), np.zeros(24), FAR)


def test_calvin_tasks():
    first = scene(door=0.05, drawer=0.2, lightbulb=0, led=1)
    now = scene(door=0.21, drawer=0.07, lightbulb=1, led=0)
    now[8] += 0.06                                    # red lifted
    now[12] -= 0.11                                   # blue pushed left
    assert calvin_tasks(first, now) == {"move_slider_left", "close_drawer", "turn_on_lightbulb", "turn_off_led",
                                        "lift_red_block", "push_blue_block_left"}
    assert calvin_tasks(first, first) == set()
