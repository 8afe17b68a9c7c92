"""Record scripted-expert demonstrations and goal sets as HDF5 in the method core's layout.

Layout (see :mod:`dynaguide.data.schema`)::

    data/demo_i/actions            (L, 7) float32  relative CALVIN actions in [-1, 1]
    data/demo_i/obs/third_person   (L, H, W, 3) uint8  static camera
    data/demo_i/obs/eye_in_hand    (L, h, w, 3) uint8  gripper camera
    data/demo_i/obs/proprio        (L, 15) float32  robot_obs
    data/demo_i/obs/states         (L, 24) float32  scene_obs
    attrs: behavior (expert behaviour name), label (paper-evaluation label), seed

Frame ``t`` is the observation *before* action ``t``; the last frame of a demo is the state after its
last action, so demo length L = steps + 1 and the final action row repeats ``gripper`` with zero motion.
Goal files use the same layout with one frame per goal and attrs ``goal_set`` (``heldout`` or
``underspecified``) and ``behavior``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable, Mapping

import h5py
import numpy as np
import pybullet as p
from tqdm import tqdm

from dynaguide.data.schema import Demo
from dynaguide.data.writer import write_demo

from calvin_bridge.config import DATASET_CAMERAS, CalvinEnvConfig
from calvin_bridge.env import CalvinEnv
from calvin_bridge.experts import BEHAVIOURS, behaviour_scene, expected_label, run_expert, table_surface

#: demo seeds start here; held-out goal episodes use seeds from ``HELDOUT_SEED_OFFSET`` on
HELDOUT_SEED_OFFSET = 1_000_000


@dataclass
class CollectConfig:
    """``num_demos`` segments, behaviours drawn from ``mixture`` (weights, normalised; empty = uniform
    over all 14), seeds ``seed + i``; failed expert runs are retried with the next seed unless
    ``keep_failures``."""

    num_demos: int = 100
    seed: int = 0
    mixture: dict[str, float] = field(default_factory=dict)
    keep_failures: bool = False
    max_attempts_per_demo: int = 5

    def __post_init__(self) -> None:
        if self.num_demos <= 0:
            raise ValueError(f"num_demos must be positive, got {self.num_demos}")
        unknown = sorted(set(self.mixture) - set(BEHAVIOURS))
        if unknown:
            raise ValueError(f"mixture names unknown behaviours {unknown}; known: {list(BEHAVIOURS)}")
        if any(w < 0 for w in self.mixture.values()) or (self.mixture and sum(self.mixture.values()) <= 0):
            raise ValueError(f"mixture weights must be >= 0 with a positive sum, got {self.mixture}")

    def weights(self) -> np.ndarray:
        if not self.mixture:
            return np.full(len(BEHAVIOURS), 1.0 / len(BEHAVIOURS))
        w = np.array([self.mixture.get(b, 0.0) for b in BEHAVIOURS], dtype=np.float64)
        return w / w.sum()


def parse_mixture(text: str | None) -> dict[str, float]:
    """``"switch_on=0.01,drawer_open=1"`` → ``{"switch_on": 0.01, "drawer_open": 1.0}`` (unlisted = 0)."""
    if not text:
        return {}
    out: dict[str, float] = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"mixture entry {part!r} must look like behaviour=weight")
        try:
            out[name.strip()] = float(value)
        except ValueError as exc:
            raise ValueError(f"mixture weight for {name!r} is not a number: {value!r}") from exc
    return out


def record_episode(env: CalvinEnv, behaviour: str, seed: int) -> tuple[dict[str, np.ndarray], dict]:
    """Reset with ``seed`` into a scene for ``behaviour``, run its expert, return the arrays and result."""
    rng = np.random.default_rng(seed)
    env.reset(seed=seed, options={"scene": behaviour_scene(env, behaviour, rng)})
    return record_segment(env, behaviour, rng)


def record_segment(env: CalvinEnv, behaviour: str, rng: np.random.Generator,
                   perturb: Callable[[np.ndarray], np.ndarray] | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """Run ``behaviour``'s expert from the env's current state and return its frames (the layout above) and
    :func:`run_expert`'s result.  ``perturb`` changes the executed actions only; the recorded actions are
    the expert's (DART-style recovery labels)."""
    frames = {"third_person": [], "eye_in_hand": [], "proprio": [], "states": [], "actions": []}

    def keep(o: dict, action: np.ndarray | None) -> None:
        for camera, key in DATASET_CAMERAS.items():
            frames[key].append(o[camera])
        frames["proprio"].append(o["robot_obs"])
        frames["states"].append(o["scene_obs"])
        frames["actions"].append(action)

    def on_step(before: dict, action: np.ndarray, info: dict) -> None:
        keep(before, action)

    result = run_expert(env, behaviour, rng, on_step=on_step, perturb=perturb)
    final = env._observation(render=True)
    last_action = np.zeros(7)
    last_action[6] = frames["actions"][-1][6] if frames["actions"] else 1.0
    keep(final, last_action)
    arrays = {k: np.stack(v) for k, v in frames.items()}
    return arrays, result


def write_segment(group: h5py.Group, name: str, arrays: Mapping[str, np.ndarray], attrs: Mapping) -> None:
    """One recorded segment (or goal frame) through the method core's writer
    (:func:`dynaguide.data.writer.write_demo`)."""
    demo = Demo(actions=arrays["actions"], images={key: arrays[key] for key in DATASET_CAMERAS.values()},
                proprio=arrays["proprio"], states=arrays["states"])
    write_demo(group, demo, name, attrs=attrs, compression="gzip", compression_opts=1)


def collect(env_config: CalvinEnvConfig, cfg: CollectConfig, out: str | Path, resume: bool = False,
            progress: bool = True) -> dict:
    """Write ``cfg.num_demos`` demonstrations to ``out``; with ``resume`` keep existing demos and continue.

    Returns ``{"demos": n, "attempts": n, "failures": n, "per_behaviour": {name: n}}``.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    env_config = dataclasses.replace(env_config, render_every_step=True)
    weights = cfg.weights()
    stats = {"demos": 0, "attempts": 0, "failures": 0, "per_behaviour": {}}
    with h5py.File(out, "a" if resume else "w") as f, CalvinEnv(env_config) as env:
        data = f.require_group("data")
        data.attrs["env"] = "calvin_bridge:" + env.scene.source
        data.attrs["action_space"] = "calvin_relative_7d"
        start = len(data.keys())
        next_seed = cfg.seed + int(data.attrs.get("next_seed_offset", 0)) if resume else cfg.seed
        for i in tqdm(range(start, cfg.num_demos), desc="collect", disable=not progress, initial=start,
                      total=cfg.num_demos):
            behaviour = BEHAVIOURS[int(np.random.default_rng(cfg.seed * 7919 + i).choice(len(BEHAVIOURS), p=weights))]
            for _ in range(cfg.max_attempts_per_demo):
                seed = next_seed
                next_seed += 1
                stats["attempts"] += 1
                arrays, result = record_episode(env, behaviour, seed)
                if result["success"] or cfg.keep_failures:
                    break
                stats["failures"] += 1
            else:
                raise RuntimeError(f"expert {behaviour} failed {cfg.max_attempts_per_demo} times in a row")
            write_segment(data, f"demo_{i}", arrays, {"behavior": behaviour, "label": result["label"], "seed": seed,
                                                   "success": bool(result["success"])})
            data.attrs["next_seed_offset"] = next_seed - cfg.seed
            stats["demos"] += 1
            stats["per_behaviour"][behaviour] = stats["per_behaviour"].get(behaviour, 0) + 1
            f.flush()
    return stats


# ------------------------------------------------------------------------------------------ goals
GOAL_STATES = {
    "switch_on": {"switch": "upper"}, "switch_off": {"switch": "lower"},
    "drawer_open": {"drawer": "upper"}, "drawer_close": {"drawer": "lower"},
    "door_left": {"door": "upper"}, "door_right": {"door": "lower"},
    "button_on": {"led": 1}, "button_off": {"led": 0},
}


def underspecified_goal(env: CalvinEnv, behaviour: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A goal observation where only ``behaviour``'s target object is in its goal state; every other
    object and the robot are random (articulations: target joint at the end of its range or LED set;
    blocks: target block on the table with the TCP resting beside it)."""
    scene = env.scene
    state = scene.random_state(rng)
    joints = None
    if behaviour in GOAL_STATES:
        for key, value in GOAL_STATES[behaviour].items():
            if value in ("upper", "lower"):
                lo, hi = scene.joint_limits[key]
                span = hi - lo
                offset = rng.uniform(0, 0.15) * span
                state[key] = float(hi - offset) if value == "upper" else float(lo + offset)
            else:
                state[key] = value
        env.reset(seed=int(rng.integers(2**31)), options={"scene": state})
    else:
        colour = behaviour.split("_", 1)[1]
        lo, hi = (np.asarray(c, dtype=np.float64) for c in table_surface(env))
        target = rng.uniform(lo, hi) + np.array([0, 0, 0.005])
        fixed = {f"block_{colour}": [*target, 0, 0, float(rng.uniform(-np.pi, np.pi))]}
        state.update(scene.random_blocks(rng, fixed=fixed))
        env.reset(seed=int(rng.integers(2**31)), options={"scene": state, "randomize_robot": False})
        side = rng.uniform(-np.pi, np.pi)
        tcp_goal = target + np.array([0.05 * np.cos(side), 0.05 * np.sin(side), 0.03])
        joints = p.calculateInverseKinematics(env.robot.uid, 11, tcp_goal.tolist(),
                                              p.getQuaternionFromEuler([np.pi, 0, np.pi / 2]),
                                              restPoses=list(env.scene.layout.robot_initial_joints) + [0.02, 0.02],
                                              physicsClientId=env.client)[:7]
        env.robot.reset(np.clip(joints, env.robot.lower, env.robot.upper), gripper_action=-1.0)
    return env._observation(render=True)


def make_goals(env_config: CalvinEnvConfig, out: str | Path, per_behaviour: int = 5, seed: int = 0,
               behaviours: tuple[str, ...] = BEHAVIOURS, progress: bool = True) -> dict:
    """Write ``heldout`` goals (final frames of successful expert segments with seeds disjoint from
    ``collect``'s) and ``underspecified`` goals, ``per_behaviour`` each, to ``out``."""
    env_config = dataclasses.replace(env_config, render_every_step=False)
    counts: dict[str, int] = {}
    with h5py.File(out, "w") as f, CalvinEnv(env_config) as env:
        data = f.create_group("data")
        i = 0
        for behaviour in tqdm(behaviours, desc="goals", disable=not progress):
            seed = HELDOUT_SEED_OFFSET + seed * 10_000
            made, tries = 0, 0
            while made < per_behaviour and tries < per_behaviour * 4:
                rng = np.random.default_rng(seed + tries)
                env.reset(seed=seed + tries, options={"scene": behaviour_scene(env, behaviour, rng)})
                tries += 1
                result = run_expert(env, behaviour, rng)
                if not result["success"]:
                    continue
                _write_goal(data, f"demo_{i}", env._observation(render=True), behaviour, "heldout",
                            expected_label(behaviour))
                i, made = i + 1, made + 1
            counts[f"heldout/{behaviour}"] = made
            rng = np.random.default_rng(HELDOUT_SEED_OFFSET * 2 + seed * 10_000 + BEHAVIOURS.index(behaviour))
            for _ in range(per_behaviour):
                obs = underspecified_goal(env, behaviour, rng)
                _write_goal(data, f"demo_{i}", obs, behaviour, "underspecified", expected_label(behaviour))
                i += 1
            counts[f"underspecified/{behaviour}"] = per_behaviour
    return counts


def _write_goal(group: h5py.Group, name: str, obs: Mapping[str, np.ndarray], behaviour: str, goal_set: str,
                label: str) -> None:
    arrays = {"third_person": obs["rgb_static"][None], "eye_in_hand": obs["rgb_gripper"][None],
              "proprio": obs["robot_obs"][None], "states": obs["scene_obs"][None], "actions": np.zeros((1, 7))}
    write_segment(group, name, arrays, {"behavior": behaviour, "goal_set": goal_set, "label": label})
