"""Scripted experts for the 14 CALVIN behaviours, driving :class:`CalvinEnv` with relative actions.

Every expert reads where things are from the loaded scene: the articulated parts through their link
pose and joint axis (``PlayTableScene.part_frame``) plus contact points given in the link's own frame
(the table's unscaled units, shared by the procedural table and CALVIN's meshes), the blocks through
their PyBullet pose.  Motions are straight TCP moves between waypoints; pushes move along the joint's
world axis.  Fingers stay closed so the fingertips act as a small pusher.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Callable, Iterator

import numpy as np
import pybullet as p

from calvin_bridge.env import CalvinEnv
from calvin_bridge.labels import LED as LED_INDEX, block_position

BEHAVIOURS = ("switch_on", "switch_off", "drawer_open", "drawer_close", "door_left", "door_right",
              "button_on", "button_off", "touch_red", "touch_blue", "touch_pink",
              "displace_red", "displace_blue", "displace_pink")

#: block displacement (m) that a ``displace_*`` expert must achieve (``touch_*`` needs > 0.001 m)
DISPLACE_DISTANCE = 0.05

#: contact points in the link frame (table's unscaled units); see :mod:`calvin_bridge.procedural_table`
BUTTON_TOP = (0.0, 0.03, 0.0)
SWITCH_BELOW_HANDLE = (0.0, 0.045, 0.035)     # under the switch handle (outer half, below its lower face)
SWITCH_ABOVE_HANDLE = (0.0, 0.045, -0.06)     # above the switch handle
DRAWER_HANDLE_GAP = (0.0, 0.04, 0.265)        # between the drawer front and its handle bar
DRAWER_HANDLE_FRONT = (0.0, 0.04, 0.36)       # in front of the handle bar
DOOR_HANDLE_RIGHT_SIDE = (0.235, -0.02, 0.08)  # right of the door's handle bar (push left)
DOOR_HANDLE_LEFT_SIDE = (0.115, -0.02, 0.08)   # left of the handle bar (push right)

SAFE_HEIGHT = 0.62
TOP_DOWN_YAW = np.pi / 2


@dataclass
class Waypoint:
    """A TCP target: position (3,) m, quaternion (4,) xyzw, gripper ±1, max speed in action units
    (1 = ``max_rel_pos`` per step), position tolerance (m), step budget."""

    position: np.ndarray
    orientation: tuple
    gripper: float = -1.0
    speed: float = 1.0
    tolerance: float = 0.01
    max_steps: int = 60


def top_down(yaw: float = TOP_DOWN_YAW) -> tuple:
    """Quaternion of a gripper pointing straight down with ``yaw`` (rad)."""
    return p.getQuaternionFromEuler([np.pi, 0.0, yaw])


def approach_orientation(approach: np.ndarray, yaw: float = TOP_DOWN_YAW) -> tuple:
    """Quaternion whose z axis (fingers' direction) is ``approach`` and whose x axis is the top-down
    gripper's x axis projected off ``approach`` (so fingers keep closing along the same world axis)."""
    z = np.asarray(approach, dtype=np.float64)
    z = z / np.linalg.norm(z)
    ref = np.asarray(p.getMatrixFromQuaternion(top_down(yaw))).reshape(3, 3)[:, 0]
    x = ref - ref.dot(z) * z
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    m = np.stack([x, y, z], axis=1)
    # rotation matrix → quaternion (xyzw)
    tr = np.trace(m)
    if tr > 0:
        s = 2.0 * np.sqrt(tr + 1.0)
        q = [(m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s, 0.25 * s]
    else:
        i = int(np.argmax(np.diag(m)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * np.sqrt(1.0 + m[i, i] - m[j, j] - m[k, k])
        q = [0.0, 0.0, 0.0, (m[k, j] - m[j, k]) / s]
        q[i] = 0.25 * s
        q[j] = (m[j, i] + m[i, j]) / s
        q[k] = (m[k, i] + m[i, k]) / s
    return tuple(q)


def _transit(env: CalvinEnv, target: np.ndarray, orientation: tuple, height: float = SAFE_HEIGHT) -> Iterator[Waypoint]:
    """Lift, travel above ``target`` at ``height`` (rotating on the way), then stop above it."""
    tcp, _ = env.tcp_pose()
    h = max(height, target[2])
    yield Waypoint(np.array([tcp[0], tcp[1], max(h, tcp[2])]), orientation, tolerance=0.03, max_steps=30)
    yield Waypoint(np.array([target[0], target[1], h]), orientation, tolerance=0.02, max_steps=60)


def _button(env: CalvinEnv, rng: np.random.Generator) -> Iterator[Waypoint]:
    frame = env.scene.part_frame("button")
    top = frame.point(BUTTON_TOP)
    down = frame.axis                        # pressing increases the joint
    orn = top_down()
    yield from _transit(env, top - 0.08 * down, orn)
    yield Waypoint(top - 0.03 * down, orn, speed=0.6, tolerance=0.008)
    press_depth = (frame.upper - frame.lower) + 0.012
    yield Waypoint(top + press_depth * down, orn, speed=0.4, tolerance=0.004, max_steps=25)
    yield Waypoint(top - 0.08 * down, orn, speed=0.8, tolerance=0.02, max_steps=25)


def _switch(env: CalvinEnv, rng: np.random.Generator, on: bool) -> Iterator[Waypoint]:
    frame = env.scene.part_frame("switch")
    outward = frame.rotation[:, 1]            # the handle sticks out of the panel along link +y
    orn = approach_orientation(-outward)
    start = frame.point(SWITCH_BELOW_HANDLE if on else SWITCH_ABOVE_HANDLE)
    direction = frame.axis if on else -frame.axis
    travel = (frame.upper - frame.value + 0.03) if on else (frame.value - frame.lower + 0.03)
    pre = start + 0.10 * outward
    yield from _transit(env, pre, orn)
    yield Waypoint(pre, orn, speed=0.8, tolerance=0.01)
    yield Waypoint(start, orn, speed=0.5, tolerance=0.006)
    yield Waypoint(start + travel * direction, orn, speed=0.35, tolerance=0.006, max_steps=40)
    end = start + travel * direction
    yield Waypoint(end + 0.08 * outward, orn, speed=0.8, tolerance=0.02, max_steps=25)


def _drawer(env: CalvinEnv, rng: np.random.Generator, open_: bool) -> Iterator[Waypoint]:
    frame = env.scene.part_frame("drawer")
    orn = top_down()
    start = frame.point(DRAWER_HANDLE_GAP if open_ else DRAWER_HANDLE_FRONT)
    direction = frame.axis if open_ else -frame.axis
    travel = float(rng.uniform(0.09, 0.14))
    room = (frame.upper - frame.value) if open_ else (frame.value - frame.lower)
    travel = min(travel, room) + (0.0 if open_ else 0.02)
    yield from _transit(env, start, orn)
    yield Waypoint(start + np.array([0, 0, 0.04]), orn, speed=0.7, tolerance=0.008)
    yield Waypoint(start, orn, speed=0.4, tolerance=0.006)
    yield Waypoint(start + travel * direction, orn, speed=0.4, tolerance=0.008, max_steps=50)
    end = start + travel * direction
    yield Waypoint(end + np.array([0, 0, 0.10]), orn, speed=0.8, tolerance=0.02, max_steps=25)


def _door(env: CalvinEnv, rng: np.random.Generator, left: bool) -> Iterator[Waypoint]:
    frame = env.scene.part_frame("door")
    orn = top_down()
    start = frame.point(DOOR_HANDLE_RIGHT_SIDE if left else DOOR_HANDLE_LEFT_SIDE)
    direction = frame.axis if left else -frame.axis
    room = (frame.upper - frame.value) if left else (frame.value - frame.lower)
    travel = min(float(rng.uniform(0.09, 0.14)), room) + 0.02
    yield from _transit(env, start, orn)
    yield Waypoint(start + np.array([0, 0, 0.05]), orn, speed=0.7, tolerance=0.008)
    yield Waypoint(start, orn, speed=0.4, tolerance=0.006)
    yield Waypoint(start + travel * direction, orn, speed=0.4, tolerance=0.008, max_steps=50)
    end = start + travel * direction
    yield Waypoint(end + np.array([0, 0, 0.10]), orn, speed=0.8, tolerance=0.02, max_steps=25)


#: preferred push directions: sideways first; towards the robot only away from the cabinet front;
#: never into the cabinet (+y)
PUSH_DIRECTIONS = (np.array([1.0, 0.0, 0.0]), np.array([-1.0, 0.0, 0.0]), np.array([0.0, -1.0, 0.0]))
PUSH_MARGIN_XY = (0.06, 0.0)   # how far past a surface box (m, along x / y) a pushed block may end
CABINET_CLEARANCE_Y = -0.075   # a pusher behind the block (for -y pushes) must stay below this y (m)
#: horizontal distance (m) from the robot base within which a top-down fingertip push at table height
#: is reachable by the Panda (measured: 0.76 m reached, 0.84 m not)
PUSH_REACH = 0.74


def free_push_direction(pos: np.ndarray, others: list[np.ndarray], surfaces: dict, distance: float,
                        robot_base: np.ndarray) -> np.ndarray | None:
    """A horizontal unit push direction for a block at ``pos`` (3,) that keeps it on its surface, keeps
    the pusher and the block's path ``> 0.085`` m from the ``others`` block centres and within
    :data:`PUSH_REACH` of ``robot_base``, in the order of :data:`PUSH_DIRECTIONS`; ``None`` when no
    direction is free."""
    here = None
    for box in surfaces.values():
        lo, hi = np.asarray(box[0]), np.asarray(box[1])
        if np.all(pos[:2] >= lo[:2] - 0.03) and np.all(pos[:2] <= hi[:2] + 0.03):
            here = (lo, hi)
    if here is None:
        return None
    lo, hi = here
    margin = np.asarray(PUSH_MARGIN_XY)
    for d in PUSH_DIRECTIONS:
        end = pos + d * distance
        if np.any(end[:2] < lo[:2] - margin) or np.any(end[:2] > hi[:2] + margin):
            continue
        behind = pos - d * 0.08
        if d[1] < 0 and behind[1] > CABINET_CLEARANCE_Y:
            continue
        base = np.asarray(robot_base, dtype=np.float64)[:2]
        if max(np.linalg.norm(behind[:2] - base), np.linalg.norm(end[:2] - base)) > PUSH_REACH:
            continue
        clearance = min([_segment_point_distance(behind[:2], end[:2] + d[:2] * 0.04, o[:2]) for o in others] + [1.0])
        if clearance > 0.085:
            return d
    return None


def block_push_direction(env: CalvinEnv, colour: str, distance: float) -> np.ndarray | None:
    """:func:`free_push_direction` for block ``colour`` in the env's current scene."""
    obs = env.scene.scene_obs()
    others = [block_position(obs, c) for c in ("red", "blue", "pink") if c != colour]
    return free_push_direction(block_position(obs, colour), others, env.scene.surfaces, distance,
                               np.asarray(env.scene.layout.robot_base_position))


def _segment_point_distance(a: np.ndarray, b: np.ndarray, q: np.ndarray) -> float:
    ab = b - a
    t = float(np.clip(np.dot(q - a, ab) / max(np.dot(ab, ab), 1e-12), 0.0, 1.0))
    return float(np.linalg.norm(a + t * ab - q))


def _block_extent_along(env: CalvinEnv, colour: str, direction: np.ndarray) -> float:
    """Half-extent (m) of the block's footprint along ``direction`` from its current pose."""
    uid = env.scene.blocks[f"block_{colour}"]
    _, orn = p.getBasePositionAndOrientation(uid, physicsClientId=env.client)
    rot = np.asarray(p.getMatrixFromQuaternion(orn)).reshape(3, 3)
    half = env.scene.block_half_extents[f"block_{colour}"]
    return float(np.sum(np.abs(rot.T @ direction) * half))


def _block(env: CalvinEnv, rng: np.random.Generator, colour: str, displace: bool) -> Iterator[Waypoint]:
    distance = float(rng.uniform(0.07, 0.09)) if displace else float(rng.uniform(0.01, 0.02))
    direction = block_push_direction(env, colour, distance)
    if direction is None:
        return
    pos = block_position(env.scene.scene_obs(), colour)
    orn = top_down()
    reach = _block_extent_along(env, colour, direction)
    height = pos[2] - 0.008
    start = pos - direction * (reach + 0.03)
    start[2] = height
    yield from _transit(env, start, orn)
    yield Waypoint(start + np.array([0, 0, 0.05]), orn, speed=0.7, tolerance=0.008)
    yield Waypoint(start, orn, speed=0.4, tolerance=0.006)
    end = pos + direction * (distance - reach + 0.005)
    end[2] = height
    yield Waypoint(end, orn, speed=0.3, tolerance=0.006, max_steps=40)
    if displace:
        yield Waypoint(end + np.array([0, 0, 0.06]), orn, speed=0.6, tolerance=0.02, max_steps=20)


EXPERTS: dict[str, Callable[[CalvinEnv, np.random.Generator], Iterator[Waypoint]]] = {
    "switch_on": lambda env, rng: _switch(env, rng, True),
    "switch_off": lambda env, rng: _switch(env, rng, False),
    "drawer_open": lambda env, rng: _drawer(env, rng, True),
    "drawer_close": lambda env, rng: _drawer(env, rng, False),
    "door_left": lambda env, rng: _door(env, rng, True),
    "door_right": lambda env, rng: _door(env, rng, False),
    "button_on": _button,
    "button_off": _button,
    # c is bound by the outer lambda's argument (B023 cannot see that)
    **{f"touch_{c}": (lambda c: lambda env, rng: _block(env, rng, c, False))(c)  # noqa: B023
       for c in ("red", "blue", "pink")},
    **{f"displace_{c}": (lambda c: lambda env, rng: _block(env, rng, c, True))(c)  # noqa: B023
       for c in ("red", "blue", "pink")},
}


def expected_label(behaviour: str) -> str:
    """The paper-evaluation label a successful ``behaviour`` must produce."""
    if behaviour.startswith("displace_"):
        return "touch_" + behaviour.split("_", 1)[1]
    return behaviour


def table_surface(env: CalvinEnv) -> tuple:
    """The ``table`` placement surface ``((x, y, z) low, (x, y, z) high)`` (m) of the loaded scene, where block
    behaviours put their target block; ``ValueError`` if the scene file defines none."""
    surfaces = env.scene.surfaces
    if "table" not in surfaces:
        raise ValueError(f"scene {env.scene.source} has no 'table' surface (has {sorted(surfaces)}); block "
                         "behaviours place their target block there")
    return surfaces["table"]


def behaviour_scene(env: CalvinEnv, behaviour: str, rng: np.random.Generator) -> dict:
    """A random scene state in which ``behaviour`` is possible (e.g. switch low for ``switch_on``).

    Joints are uniform in the sub-range that leaves room for the behaviour's threshold; for block
    behaviours the target block lies on the ``table`` surface (the shelf behind the sliding door is not
    reachable with a top-down push), the other blocks anywhere.
    """
    return scene_for_behaviours(env, (behaviour,), rng)


#: the articulated part each articulated behaviour moves (two behaviours of one part exclude each other)
BEHAVIOUR_PART = {"switch_on": "switch", "switch_off": "switch", "drawer_open": "drawer", "drawer_close": "drawer",
                  "door_left": "door", "door_right": "door", "button_on": "led", "button_off": "led"}


def scene_for_behaviours(env: CalvinEnv, behaviours, rng: np.random.Generator) -> dict:
    """A random scene state in which every behaviour of ``behaviours`` is possible (none: a random state).

    Several articulated behaviours compose when they move different parts (``switch_on`` + ``drawer_open``);
    two of one part (``door_left`` + ``door_right``) or two block behaviours raise ``ValueError``.
    """
    behaviours = tuple(behaviours)
    for behaviour in behaviours:
        if behaviour not in EXPERTS:
            raise ValueError(f"unknown behaviour {behaviour!r}; known: {list(BEHAVIOURS)}")
    parts = [BEHAVIOUR_PART[b] for b in behaviours if b in BEHAVIOUR_PART]
    blocks = [b for b in behaviours if b not in BEHAVIOUR_PART]
    if len(set(parts)) < len(parts) or len(blocks) > 1:
        raise ValueError(f"behaviours {list(behaviours)} cannot all be possible in one scene "
                         "(two behaviours of one part, or more than one block behaviour)")
    scene = env.scene
    state = scene.random_state(rng)
    for behaviour in behaviours:
        _make_possible(env, state, behaviour, rng)
    return state


#: where each articulated behaviour is possible: (part, low, high) as fractions of the part's joint range.  A
#: scene made for a behaviour draws its part uniformly in this band (:func:`_make_possible`); a play collector
#: may pick the behaviour in a state only while the part lies in it (:func:`is_possible`).  One table for both.
ARTICULATED_BANDS = {"switch_on": ("switch", 0.0, 0.3), "switch_off": ("switch", 0.7, 1.0),
                     "drawer_open": ("drawer", 0.0, 0.45), "drawer_close": ("drawer", 0.55, 1.0),
                     "door_left": ("door", 0.0, 0.5), "door_right": ("door", 0.5, 1.0)}
#: the green LED value in which each button behaviour is possible
BUTTON_LED = {"button_on": 0, "button_off": 1}
#: displacement (m) a block behaviour must be able to push its block (the ``displace_*`` experts' longest push)
FEASIBLE_PUSH = 0.09


def is_possible(env: CalvinEnv, behaviour: str) -> bool:
    """Whether ``behaviour``'s expert can do it from the env's *current* scene state (a play collector asks
    this before chaining the next behaviour): the part inside :data:`ARTICULATED_BANDS`, the LED in the state
    :data:`BUTTON_LED` needs, or the target block on the ``table`` surface with a free push of
    :data:`FEASIBLE_PUSH` (blocks on the shelf behind the sliding door are out of the top-down pusher's reach)."""
    if behaviour not in EXPERTS:
        raise ValueError(f"unknown behaviour {behaviour!r}; known: {list(BEHAVIOURS)}")
    scene = env.scene
    if behaviour in ARTICULATED_BANDS:
        part, a, b = ARTICULATED_BANDS[behaviour]
        lo, hi = scene.joint_limits[part]
        value = scene.joint_value(part)
        return lo + (hi - lo) * a <= value <= lo + (hi - lo) * b
    obs = scene.scene_obs()
    if behaviour in BUTTON_LED:
        return int(round(float(obs[LED_INDEX]))) == BUTTON_LED[behaviour]
    colour = behaviour.split("_", 1)[1]
    pos = block_position(obs, colour)
    lo, hi = (np.asarray(c, dtype=np.float64) for c in table_surface(env))
    if np.any(pos[:2] < lo[:2]) or np.any(pos[:2] > hi[:2]) or abs(pos[2] - hi[2]) > 0.05:
        return False
    others = [block_position(obs, c) for c in ("red", "blue", "pink") if c != colour]
    return free_push_direction(pos, others, scene.surfaces, FEASIBLE_PUSH,
                               np.asarray(scene.layout.robot_base_position)) is not None


def _make_possible(env: CalvinEnv, state: dict, behaviour: str, rng: np.random.Generator) -> None:
    """Change ``state`` in place so that ``behaviour`` is possible (see :func:`behaviour_scene`)."""
    scene = env.scene
    if behaviour in ARTICULATED_BANDS:
        part, a, b = ARTICULATED_BANDS[behaviour]
        lo, hi = scene.joint_limits[part]
        state[part] = float(lo + (hi - lo) * rng.uniform(a, b))
    elif behaviour in BUTTON_LED:
        state["led"] = BUTTON_LED[behaviour]
    else:
        colour = behaviour.split("_", 1)[1]
        lo, hi = (np.asarray(c, dtype=np.float64) for c in table_surface(env))
        for _ in range(100):   # resample until a push with the largest (displace) distance is free
            target = rng.uniform(lo, hi) + np.array([0.0, 0.0, 0.005])
            fixed = {f"block_{colour}": [*target.tolist(), 0.0, 0.0, float(rng.uniform(-np.pi, np.pi))]}
            blocks = scene.random_blocks(rng, fixed=fixed)
            others = [np.asarray(v[:3]) for k, v in blocks.items() if k != f"block_{colour}"]
            if free_push_direction(target, others, env.scene.surfaces, FEASIBLE_PUSH,
                                   np.asarray(env.scene.layout.robot_base_position)) is not None:
                break
        state.update(blocks)


def target_point(env: CalvinEnv, behaviour: str) -> np.ndarray:
    """World point (3,) m where ``behaviour``'s expert first contacts its object in the current scene
    (position target of the ITPS baseline): the button top, the switch handle's lower/upper side, the
    drawer handle, the door handle's side, or the block's centre."""
    scene = env.scene
    points = {"button_on": ("button", BUTTON_TOP), "button_off": ("button", BUTTON_TOP),
              "switch_on": ("switch", SWITCH_BELOW_HANDLE), "switch_off": ("switch", SWITCH_ABOVE_HANDLE),
              "drawer_open": ("drawer", DRAWER_HANDLE_GAP), "drawer_close": ("drawer", DRAWER_HANDLE_FRONT),
              "door_left": ("door", DOOR_HANDLE_RIGHT_SIDE), "door_right": ("door", DOOR_HANDLE_LEFT_SIDE)}
    if behaviour in points:
        part, local = points[behaviour]
        return scene.part_frame(part).point(local)
    if behaviour.startswith(("touch_", "displace_")):
        return block_position(scene.scene_obs(), behaviour.split("_", 1)[1]).copy()
    raise ValueError(f"unknown behaviour {behaviour!r}; known: {list(BEHAVIOURS)} or touch_<colour>")


def run_expert(env: CalvinEnv, behaviour: str, rng: np.random.Generator,
               on_step: Callable[[dict, np.ndarray, dict], None] | None = None, max_steps: int = 240,
               perturb: Callable[[np.ndarray], np.ndarray] | None = None) -> dict:
    """Execute ``behaviour``'s expert in an already reset ``env`` (or from wherever a play episode stands:
    labels and the block displacement count from ``env.first_scene_obs``, see :meth:`CalvinEnv.begin_segment`).

    ``on_step(obs_before, action, info)`` is called for every step (for recording) with the expert's own
    action; ``perturb(action) -> executed action`` (DART-style noise) changes only what the robot executes,
    so the recorded label is the expert's correction from the perturbed state.  Returns
    ``{"label": final label, "success": bool, "steps": n, "displacement": block motion (m) or None}``.
    """
    if behaviour not in EXPERTS:
        raise ValueError(f"unknown behaviour {behaviour!r}; known: {list(BEHAVIOURS)}")
    steps = 0
    obs = None
    first = env.first_scene_obs.copy()
    for wp in EXPERTS[behaviour](env, rng):
        euler = np.asarray(p.getEulerFromQuaternion(wp.orientation))
        for _ in range(wp.max_steps):
            if steps >= max_steps:
                break
            tcp, _ = env.tcp_pose()
            delta = wp.position - tcp
            dist = float(np.linalg.norm(delta))
            if dist < wp.tolerance:
                break
            limit = wp.speed * env.config.max_rel_pos
            target = tcp + delta * min(1.0, limit / max(dist, 1e-9))
            action = env.absolute_to_relative(target, euler, wp.gripper)
            before = obs if obs is not None else env._observation(env.config.render_every_step)
            obs, _, _, _, info = env.step(action if perturb is None else perturb(action))
            if on_step is not None:
                on_step(before, action, info)
            steps += 1
    label = env.behaviour()
    displacement = None
    if behaviour.startswith(("touch_", "displace_")):
        colour = behaviour.split("_", 1)[1]
        displacement = float(np.linalg.norm(block_position(env.scene.scene_obs(), colour)
                                            - block_position(first, colour)))
    success = label == expected_label(behaviour)
    if behaviour.startswith("displace_"):
        success = success and displacement is not None and displacement > DISPLACE_DISTANCE
    return {"label": label, "success": bool(success), "steps": steps, "displacement": displacement}


def run_episode(env: CalvinEnv, behaviour: str, seed: int, **kwargs) -> dict:
    """Reset ``env`` with ``seed`` into a scene suited to ``behaviour`` and run its expert."""
    rng = np.random.default_rng(seed)
    env.reset(seed=seed, options={"scene": behaviour_scene(env, behaviour, rng)})
    return run_expert(env, behaviour, rng, **kwargs)
