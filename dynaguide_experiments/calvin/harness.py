"""Batched closed-loop evaluation on the CALVIN-like table (the paper's appendix protocol).

    dynaguide calvin eval --experiment articulated --methods base,dynaguide [--trials 20] [--quick]

One *cell* = (target behaviour, method), ``trials`` episodes of at most ``horizon`` control steps (30 Hz),
each stopped at the first behaviour the labeller detects (:func:`calvin_bridge.labels.behaviour_label`);
the cell's rate is the share of trials whose first behaviour is the target.

Trial ``i`` of target ``g`` uses episode seed ``seed + 1000 * index(g) + i`` for everything random in it
(scene, start pose, the policy's noise), the same for every method, so methods are compared on the same
scenes; the start robot pose is the first frame of a validation segment (``validation`` file, seeds
disjoint from training and goals), the scene a random one in which the target is possible
(:func:`calvin_bridge.experts.behaviour_scene`: the target's part in its sub-range, everything else random).

Speed: ``batch_envs`` environments run side by side and share one batched policy/guidance call per
replanning tick (every ``n_action_steps`` steps); a finished environment takes the next trial at the next
tick.  Only the ``n_obs_steps`` frames before each tick are rendered.  Results are appended per trial to
``<out>/trials/<target>__<method>.jsonl``; a killed run resumes there, rerunning only unfinished trials
with the same per-trial seeds.  (Float rounding of batched calls depends on which trials share a batch,
and a closed loop can amplify it, so a resumed trial is the same experiment, not always a bit-identical
trajectory.)
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable, Sequence

import h5py
import numpy as np
import torch
from tqdm import tqdm

from calvin_bridge.config import CalvinEnvConfig
from calvin_bridge.env import CalvinEnv
from calvin_bridge.experts import scene_for_behaviours, target_point
from calvin_bridge.labels import LABELS
from dynaguide.baselines import goal_conditioned_sample, sampling_baseline
from dynaguide.data.datasets import to_image_tensor
from dynaguide.guidance.goals import GoalLatents
from dynaguide.guidance.objectives import DynaGuideObjective, PositionGuidanceObjective
from dynaguide.guidance.rtc import prefix_weights, shift_prefix
from dynaguide.guidance.sampler import guided_ddim_sample

from dynaguide_experiments.calvin.config import EvalConfig, ObjectiveSetup

#: the static camera (the env's ``rgb_static``): what the embedder and the dynamics model see, and the camera
#: every base policy has; a policy may see further env cameras (``rgb_gripper``), listed in its ``image_keys``
POLICY_CAMERA = "rgb_static"


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a rate ``k / n``."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def label_of(behaviour: str) -> str:
    """Evaluation label of a behaviour name (``displace_red`` and ``touch_red`` are both ``touch_red``)."""
    if behaviour.startswith("displace_"):
        return "touch_" + behaviour.split("_", 1)[1]
    return behaviour


@dataclass(frozen=True)
class Task:
    """What one cell asks for: a single target behaviour, or a MultiObjectives setup.

    ``name``: the cell's name (the target behaviour or the setup name); ``positives`` / ``negatives``:
    behaviour names whose goal images steer towards / away; ``scene``: behaviours made possible in each
    trial's scene; ``sum_positives``: see :class:`ObjectiveSetup`.
    """

    name: str
    positives: tuple[str, ...]
    negatives: tuple[str, ...] = ()
    scene: tuple[str, ...] = ()
    sum_positives: bool = False

    @classmethod
    def single(cls, target: str) -> Task:
        return cls(target, (target,), scene=(target,))

    @classmethod
    def from_setup(cls, name: str, setup: ObjectiveSetup) -> Task:
        return cls(name, tuple(setup.positives), tuple(setup.negatives), tuple(setup.scene), setup.sum_positives)

    @property
    def is_single(self) -> bool:
        return len(self.positives) == 1 and not self.negatives and self.scene == self.positives

    def outcome(self, label: str) -> str:
        """``"positive"``, ``"negative"``, ``"other"`` (another behaviour) or ``"none"`` (no behaviour)."""
        if label == "no_behaviour":
            return "none"
        if label in {label_of(b) for b in self.positives}:
            return "positive"
        if label in {label_of(b) for b in self.negatives}:
            return "negative"
        return "other"

    def success(self, label: str) -> bool:
        """First behaviour positive; with no positives, any behaviour that is not a negative one."""
        outcome = self.outcome(label)
        return outcome == "positive" if self.positives else outcome == "other"


# ------------------------------------------------------------------------------------------ data
def load_goal_images(path: str | Path, behaviour: str, goal_set: str, limit: int) -> np.ndarray:
    """``(K, H, W, 3) uint8`` final static frames of ``behaviour``'s goals in ``goal_set`` (first ``limit``)."""
    frames = []
    with h5py.File(path, "r") as f:
        names = sorted(f["data"], key=lambda n: int(n.split("_")[-1]))
        for name in names:
            g = f["data"][name]
            if g.attrs.get("goal_set") == goal_set and g.attrs.get("behavior") == behaviour:
                frames.append(g["obs/third_person"][-1])
            if len(frames) >= limit:
                break
    if not frames:
        raise ValueError(f"{path} has no {goal_set!r} goals for {behaviour!r}")
    return np.stack(frames)


#: which start poses each split draws from (:func:`load_start_poses`): even-numbered validation segments for
#: validation (choosing every setting), odd-numbered ones for evaluation, so the two never share a start pose
START_POSE_PARITY = {"validation": 0, "evaluation": 1}


def load_start_poses(path: str | Path, split: str | None = None) -> np.ndarray:
    """``(S, 8)`` start poses (7 arm joints rad + gripper action) = first frames of the validation segments;
    with ``split`` only that split's half of them (:data:`START_POSE_PARITY`)."""
    if split is not None and split not in START_POSE_PARITY:
        raise ValueError(f"split must be one of {sorted(START_POSE_PARITY)}, got {split!r}")
    poses = []
    with h5py.File(path, "r") as f:
        for name in sorted(f["data"], key=lambda n: int(n.split("_")[-1])):
            robot_obs = f["data"][name]["obs/proprio"][0]
            poses.append(np.concatenate([robot_obs[7:14], robot_obs[14:15]]))
    if split is not None:
        poses = poses[START_POSE_PARITY[split]::2]
    if not poses:
        raise ValueError(f"{path} has no segments to take start poses from")
    return np.asarray(poses, dtype=np.float64)


#: two consecutive chunks *reverse* when the net translations they execute point more than 90° apart
#: (cosine below this: the second undoes part of the first) and both move at least :data:`REVERSAL_MIN_MOVE`
#: action units (1 unit = 2 cm; slower chunks are not counted)
REVERSAL_COSINE = 0.0
REVERSAL_MIN_MOVE = 0.5


def chunk_turn(previous_move: np.ndarray | None, move: np.ndarray) -> float | None:
    """Cosine between the net xyz translations (3,) (summed relative actions) of two consecutive executed
    chunks; ``None`` when the pair does not count (no previous chunk, or either barely moves)."""
    if previous_move is None:
        return None
    a, b = float(np.linalg.norm(previous_move)), float(np.linalg.norm(move))
    if a < REVERSAL_MIN_MOVE or b < REVERSAL_MIN_MOVE:
        return None
    return float(np.dot(previous_move, move)) / (a * b)


def is_reversal(previous_move: np.ndarray | None, move: np.ndarray) -> bool | None:
    """Whether ``move`` reverses ``previous_move`` (:func:`chunk_turn` below :data:`REVERSAL_COSINE`);
    ``None`` when the pair does not count."""
    turn = chunk_turn(previous_move, move)
    return None if turn is None else turn < REVERSAL_COSINE


def reversal_counts(actions: np.ndarray, period: int) -> tuple[int, int]:
    """``(reversals, counted pairs)`` over consecutive ``period``-step windows of a recorded action sequence
    ``(L, 7)`` — the same measure :class:`CellRunner` takes of executed chunks (expert data's reference)."""
    previous, reversals, pairs = None, 0, 0
    for start in range(0, len(actions) - period + 1, period):
        move = np.asarray(actions[start:start + period, :3], dtype=np.float64).sum(axis=0)
        verdict = is_reversal(previous, move)
        if verdict is not None:
            pairs += 1
            reversals += int(verdict)
        previous = move
    return reversals, pairs


# ------------------------------------------------------------------------------------------ planners
@dataclass
class Observation:
    """What a planner sees for the B active environments.

    images: ``(B, To, 3, H, W)`` float [0, 1] static camera (oldest first); proprio: ``(B, To, 15)`` raw
    ``robot_obs``; targets: ``(B, 3)`` m, the target part's contact point (ITPS only); generators: one
    torch generator per environment (its trial's noise stream); prefix / prefix_weights: real-time chunking's
    ``(B, T, A)`` normalised previous-chunk actions aligned to the new chunk and ``(B, T)`` soft mask
    (:func:`dynaguide.guidance.sampler.guided_ddim_sample`), None without RTC; cameras: the policy's further
    cameras by env name (``rgb_gripper``: ``(B, To, 3, h, w)`` float [0, 1]), empty for a static-only policy.
    """

    images: torch.Tensor
    proprio: torch.Tensor
    targets: torch.Tensor
    generators: list[torch.Generator]
    prefix: torch.Tensor | None = None
    prefix_weights: torch.Tensor | None = None
    cameras: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)

    def policy_inputs(self) -> dict[str, torch.Tensor]:
        """The policy's observation dict: every camera under its env name and ``proprio``."""
        return {POLICY_CAMERA: self.images, **self.cameras, "proprio": self.proprio}


Planner = Callable[[Observation], torch.Tensor]   # → normalised chunks (B, T, A)


class Planners:
    """The evaluated methods over one policy / dynamics model / embedder; ``make(method, target)``."""

    def __init__(self, policy, dynamics, embedder, eval_cfg: EvalConfig, goals: dict[str, np.ndarray],
                 max_rel_pos: float, gc_policy=None,
                 action_transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        """``action_transform``: policy-normalised chunk ``(B, T, A)`` → the dynamics model's normalised action
        space, differentiable (:func:`dynaguide.guidance.objectives.action_transform_for`); None when both
        normalise alike."""
        self.policy, self.dynamics, self.embedder = policy, dynamics, embedder
        self.cfg = eval_cfg
        self.goals = goals
        self.max_rel_pos = max_rel_pos
        self.gc_policy = gc_policy
        self.ddim = policy.cfg.ddim
        self.action_offset = int(getattr(policy, "action_offset", 0))
        self.action_transform = action_transform

    def guidance_set(self, task: Task) -> GoalLatents:
        """The task's positive goals (and its negatives, or with ``negatives: others`` every other behaviour's)."""
        def images(behaviours) -> torch.Tensor | None:
            frames = [self.goals[b] for b in behaviours]
            return to_image_tensor(np.concatenate(frames)) if frames else None

        negatives = list(task.negatives)
        if self.cfg.negatives == "others":
            wanted = {label_of(b) for b in task.positives}
            negatives += [b for b in self.goals if label_of(b) not in wanted and b not in negatives]
        guidance = GoalLatents.from_images(self.embedder, self.dynamics, images(task.positives), images(negatives),
                                           self.cfg.guidance)
        if task.sum_positives:
            guidance = dataclasses.replace(guidance, positive_groups=tuple(len(self.goals[b]) for b in task.positives))
        return guidance

    def _cond(self, obs: Observation) -> torch.Tensor:
        with torch.no_grad():
            return self.policy.encode_observation(obs.policy_inputs())

    def _objective(self, obs: Observation, guidance: GoalLatents) -> DynaGuideObjective:
        with torch.no_grad():
            tokens = self.embedder(obs.images[:, -1])
        return DynaGuideObjective(self.dynamics, tokens, obs.proprio[:, -1], guidance, action_offset=self.action_offset,
                                  action_transform=self.action_transform)

    @staticmethod
    def _rtc(obs: Observation, rtc) -> dict:
        """The sampler's real-time-chunking keywords for ``obs`` with settings ``rtc`` (none without a prefix)."""
        if obs.prefix is None:
            return {}
        return {"prefix": obs.prefix, "prefix_weights": obs.prefix_weights, "rtc": rtc}

    def make(self, method: str, task: Task | str) -> Planner:
        task = Task.single(task) if isinstance(task, str) else task
        g, rtc = self.cfg.guidance, self.cfg.rtc
        if rtc.enabled and method in ("gpc", "goal_conditioned"):
            raise ValueError(f"rtc is implemented in the guided DDIM sampler; method {method!r} does not use it")
        if method == "base":
            return lambda obs: guided_ddim_sample(self.policy, self._cond(obs), None, scale=0.0, ddim=self.ddim,
                                                  generator=obs.generators, **self._rtc(obs, rtc)).actions
        if method in ("itps", "goal_conditioned") and not task.is_single:
            raise ValueError(f"method {method!r} needs a single target behaviour, not the setup {task.name!r}")
        if method == "dynaguide":
            guidance = self.guidance_set(task)
            return lambda obs: guided_ddim_sample(
                self.policy, self._cond(obs), self._objective(obs, guidance), ddim=self.ddim,
                generator=obs.generators, **g.sampler_kwargs(), **self._rtc(obs, rtc)).actions
        if method == "gpc":
            guidance = self.guidance_set(task)
            return lambda obs: sampling_baseline(self.policy, self._cond(obs), self._objective(obs, guidance),
                                                 num_samples=self.cfg.gpc_samples, ddim=self.ddim,
                                                 generator=obs.generators).actions
        if method == "itps":
            if self.action_offset:
                raise ValueError("method 'itps' assumes chunks that start at the current step (action_offset 0); "
                                 f"this policy's chunks start {self.action_offset} step(s) in the past")

            def itps(obs: Observation) -> torch.Tensor:
                objective = PositionGuidanceObjective(obs.targets, obs.proprio[:, -1, :3],
                                                      self.policy.unnormalize_actions,
                                                      step_scale=self.max_rel_pos, reduction="min")
                return guided_ddim_sample(self.policy, self._cond(obs), objective, scale=self.cfg.itps_scale,
                                          ddim=self.ddim, stochastic_steps=g.stochastic_steps,
                                          stochastic_mode=g.stochastic_mode, generator=obs.generators,
                                          **self._rtc(obs, rtc)).actions
            return itps
        if method == "goal_conditioned":
            if self.gc_policy is None:
                raise ValueError("method 'goal_conditioned' needs a goal-conditioned policy checkpoint")
            goal = to_image_tensor(self.goals[task.name][:1])
            gc = self.gc_policy
            return lambda obs: goal_conditioned_sample(gc, obs.policy_inputs(), goal,
                                                       ddim=gc.cfg.ddim, generator=obs.generators).actions
        raise ValueError(f"unknown method {method!r}")


# ------------------------------------------------------------------------------------------ rollouts
@dataclass
class _Slot:
    trial: int
    seed: int
    frames: dict[str, list[np.ndarray]]   # camera (env name) → its last To frames (H, W, 3) uint8, oldest first
    proprio: list[np.ndarray]
    target_xyz: np.ndarray
    generator: torch.Generator
    steps: int = 0
    started: float = 0.0
    label: str | None = None
    previous: np.ndarray | None = None  # the last chunk (raw, (T, A)): runs on while the next one is computed
    previous_norm: np.ndarray | None = None  # the same chunk normalised (T, A): real-time chunking's prefix
    hold: np.ndarray | None = None      # the action that holds the pose (start of a wall-clock trial)
    last_move: np.ndarray | None = None  # net xyz translation (3,) of the last executed tick (reversal count)
    turns: list[float] = dataclasses.field(default_factory=list)   # chunk_turn of each counted pair
    splice_jumps: list[float] = dataclasses.field(default_factory=list)  # see CellRunner._actions_of_tick
    chunks: int = 0                     # chunks planned so far (the id of the newest one)
    last_action: np.ndarray | None = None  # the last action handed out (raw) and the chunk it came from (0: hold)
    last_source: int = 0


def trial_seed(cfg: EvalConfig, target_index: int, trial: int) -> int:
    return cfg.seed + 1000 * target_index + trial


class CellRunner:
    """Runs the trials of cells on ``batch_envs`` environments (created once, reused across cells)."""

    def __init__(self, env_config: CalvinEnvConfig, eval_cfg: EvalConfig, start_poses: np.ndarray,
                 n_obs_steps: int, n_action_steps: int, unnormalize: Callable[[torch.Tensor], torch.Tensor],
                 action_offset: int = 0, cameras: Sequence[str] = (POLICY_CAMERA,)) -> None:
        """``action_offset``: chunk index of the current step (the policy's ``action_offset``: 0 for ours,
        To − 1 for a LeRobot policy); execution starts there.  ``cameras``: the env cameras the policy sees (its
        ``image_keys``); the static camera is always rendered (the embedder's input)."""
        if action_offset < 0:
            raise ValueError(f"action_offset must be >= 0, got {action_offset}")
        self.cameras = (POLICY_CAMERA, *dict.fromkeys(c for c in cameras if c != POLICY_CAMERA))
        self.env_config = dataclasses.replace(env_config, render_every_step=False, max_episode_steps=None)
        self.cfg = eval_cfg
        self.start_poses = start_poses
        self.n_obs_steps, self.n_action_steps = n_obs_steps, n_action_steps
        self.action_offset = action_offset
        self.unnormalize = unnormalize
        self.envs: list[CalvinEnv] = []
        self._chunk_shape: tuple[int, int] = (0, 0)  # (T, A) of the planner's chunks, known after its first call

    def close(self) -> None:
        for env in self.envs:
            env.close()
        self.envs = []

    def _env(self, i: int) -> CalvinEnv:
        while len(self.envs) <= i:
            self.envs.append(CalvinEnv(self.env_config))
        return self.envs[i]

    def _start(self, env: CalvinEnv, task: Task, trial: int, seed: int) -> _Slot:
        rng = np.random.default_rng(seed)
        pose = self.start_poses[int(rng.integers(len(self.start_poses)))]
        scene = scene_for_behaviours(env, task.scene, rng)
        env.reset(seed=seed, options={"scene": scene, "robot_joints": pose[:7],
                                      "gripper": float(np.sign(pose[7]) or 1.0)})
        images = self._render(env)
        proprio = env.robot.robot_obs()
        hold = np.zeros(7)
        hold[6] = float(np.sign(pose[7]) or 1.0)
        return _Slot(trial, seed, {c: [image] * self.n_obs_steps for c, image in images.items()},
                     [proprio] * self.n_obs_steps,
                     target_point(env, task.positives[0]) if task.is_single else np.zeros(3),
                     torch.Generator().manual_seed(seed), started=time.perf_counter(),
                     hold=hold)

    def _render(self, env: CalvinEnv) -> dict[str, np.ndarray]:
        """The policy's cameras of ``env``'s current state: env name → ``(H, W, 3)`` uint8."""
        images = env.render_cameras()
        missing = [c for c in self.cameras if c not in images]
        if missing:
            raise ValueError(f"the env renders no camera {missing} (it has {sorted(images)})")
        return {c: images[c] for c in self.cameras}

    def observe_frame(self, slot: _Slot, env: CalvinEnv, robot_obs: np.ndarray) -> None:
        """Append ``env``'s current frames and ``robot_obs (15,)`` to ``slot``'s last-To histories."""
        for camera, image in self._render(env).items():
            slot.frames[camera] = (slot.frames[camera] + [image])[-self.n_obs_steps:]
        slot.proprio = (slot.proprio + [robot_obs])[-self.n_obs_steps:]

    def observation(self, slots: Sequence[_Slot], targets: torch.Tensor | None = None,
                    prefix: torch.Tensor | None = None, prefix_weights: torch.Tensor | None = None) -> Observation:
        """The planners' :class:`Observation` of ``slots`` (``targets`` ``(B, 3)``: zeros when None)."""
        def frames(camera: str) -> torch.Tensor:
            return to_image_tensor(np.stack([np.stack(s.frames[camera]) for s in slots]))

        return Observation(
            images=frames(POLICY_CAMERA),
            proprio=torch.from_numpy(np.stack([np.stack(s.proprio) for s in slots])).float(),
            targets=targets if targets is not None else torch.zeros(len(slots), 3),
            generators=[s.generator for s in slots], prefix=prefix, prefix_weights=prefix_weights,
            cameras={c: frames(c) for c in self.cameras if c != POLICY_CAMERA})

    def _actions_of_tick(self, slot: _Slot, chunk: np.ndarray, normalised: np.ndarray | None = None) -> np.ndarray:
        """The ``n_action_steps`` actions executed between two replanning ticks, counted from the chunk's current
        step o = ``action_offset``: the new chunk's steps o … o + P − 1 in lockstep; with ``latency_steps = d``
        first the previous chunk's steps o + P … o + P + d − 1 (the pose held at the start of a trial), then
        the new chunk's steps o + d … o + P − 1.  ``chunk``: ``(T, A)`` raw; ``normalised``: the same chunk in
        the policy's space (kept as the next chunk's real-time-chunking prefix).

        Splices: wherever the executed sequence switches from one chunk to the next (at a tick's start in lockstep
        and with d = P, at step d of the tick with 0 < d < P; the hold at a trial's start does not count), the
        jump ``‖a_k − a_{k−1}‖`` over the six motion dimensions of the two actions clipped to [−1, 1] as the env
        clips them (action units; 1 = 2 cm / 0.05 rad per step) is appended to ``slot.splice_jumps``."""
        d, p, o = self.cfg.latency_steps, self.n_action_steps, self.action_offset
        if o + p + d > chunk.shape[0]:
            raise ValueError(f"action_offset {o} + n_action_steps {p} + latency_steps {d} exceed the chunk's "
                             f"{chunk.shape[0]} steps")
        slot.chunks += 1
        if d == 0:
            tick, sources = chunk[o:o + p], [slot.chunks] * p
            slot.previous_norm = normalised   # lockstep RTC: the next chunk is pulled towards this plan's tail
        else:
            had_previous = slot.previous is not None
            before = slot.previous[o + p:o + p + d] if had_previous else np.repeat(slot.hold[None], d, axis=0)
            slot.previous, slot.previous_norm = chunk, normalised
            tick = np.concatenate([before, chunk[o + d:o + p]])
            sources = [slot.chunks - 1 if had_previous else 0] * d + [slot.chunks] * (p - d)
        for action, source in zip(tick, sources):
            if slot.last_action is not None and slot.last_source and source != slot.last_source:
                motion = np.clip(np.stack([slot.last_action[:6], action[:6]]), -1.0, 1.0)
                slot.splice_jumps.append(round(float(np.linalg.norm(motion[1] - motion[0])), 5))
            slot.last_action, slot.last_source = action, source
        return tick

    def _rtc_prefix(self, slots: Sequence[_Slot], horizon: int, action_dim: int
                    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Real-time chunking's ``prefix (B, T, A)`` and ``weights (B, T)`` for the planner: each slot's previous
        normalised chunk shifted by P = ``n_action_steps`` (what it still covers of the new chunk), frozen on the
        new chunk's first o + d steps (those run from the previous chunk), soft over the rest of the overlap
        T − P; a slot without a previous chunk gets zero weights.  ``(None, None)`` without RTC or no previous.
        In lockstep (d = 0) nothing is frozen beyond o: the overlap is only pulled towards the previous plan
        (chunk-to-chunk consistency against mode switching, measured by the base check's reversals)."""
        d, p, o = self.cfg.latency_steps, self.n_action_steps, self.action_offset
        if not self.cfg.rtc.enabled or all(s.previous_norm is None for s in slots):
            return None, None
        zeros = np.zeros((horizon, action_dim), dtype=np.float32)
        previous = torch.from_numpy(np.stack([s.previous_norm if s.previous_norm is not None else zeros
                                              for s in slots]).astype(np.float32))
        w = prefix_weights(horizon, o + d, horizon - p)
        weights = torch.stack([w if s.previous_norm is not None else torch.zeros(horizon) for s in slots])
        return shift_prefix(previous, p), weights

    def run_cell(self, task: Task | str, target_index: int, planner: Planner, done: set[int],
                 record: Callable[[dict], None], progress: bool = True, desc: str = "") -> None:
        """Run the trials of one cell not in ``done``; ``record(result)`` is called once per finished trial.
        ``task``: a target behaviour name or a :class:`Task`."""
        task = Task.single(task) if isinstance(task, str) else task
        pending = [i for i in range(self.cfg.trials) if i not in done]
        slots: list[_Slot | None] = [None] * min(self.cfg.batch_envs, max(1, len(pending)))
        bar = tqdm(total=self.cfg.trials, initial=self.cfg.trials - len(pending), desc=desc, disable=not progress,
                   leave=False, dynamic_ncols=True)
        while pending or any(slots):
            for i, slot in enumerate(slots):
                if slot is None and pending:
                    trial = pending.pop(0)
                    slots[i] = self._start(self._env(i), task, trial, trial_seed(self.cfg, target_index, trial))
            active = [i for i, s in enumerate(slots) if s is not None]
            prefix, weights = self._rtc_prefix([slots[i] for i in active], *self._chunk_shape)
            obs = self.observation([slots[i] for i in active],
                                   torch.from_numpy(np.stack([slots[i].target_xyz for i in active])).float(),
                                   prefix, weights)
            with torch.no_grad():
                chunk = planner(obs)
                raw = self.unnormalize(chunk).cpu().numpy()
                normalised = chunk.cpu().numpy()
            self._chunk_shape = tuple(normalised.shape[1:])
            for row, i in enumerate(active):
                slot, env = slots[i], self.envs[i]
                tick = self._actions_of_tick(slot, raw[row], normalised[row])
                move = np.clip(tick[:, :3], -1.0, 1.0).sum(axis=0)
                turn = chunk_turn(slot.last_move, move)
                if turn is not None:
                    slot.turns.append(round(turn, 3))
                slot.last_move = move
                for k, action in enumerate(tick):
                    obs_k, _, _, _, info = env.step(action)
                    slot.steps += 1
                    if info["behaviour"] != "no_behaviour":
                        slot.label = info["behaviour"]
                        break
                    if slot.steps >= self.cfg.horizon:
                        slot.label = "no_behaviour"
                        break
                    if k >= self.n_action_steps - self.n_obs_steps:
                        self.observe_frame(slot, env, obs_k["robot_obs"])
                if slot.label is not None:
                    record({"target": task.name, "trial": slot.trial, "seed": slot.seed, "label": slot.label,
                            "success": task.success(slot.label), "steps": slot.steps,
                            "reversals": sum(t < REVERSAL_COSINE for t in slot.turns),
                            "chunk_pairs": len(slot.turns), "chunk_turns": slot.turns,
                            "splice_jumps": slot.splice_jumps,
                            "seconds": round(time.perf_counter() - slot.started, 2)})
                    slots[i] = None
                    bar.update(1)
        bar.close()


# ------------------------------------------------------------------------------------------ summaries
def summarise(trials: Sequence[dict], target: Task | str) -> dict:
    """``{"rate", "n", "ci95", "distribution", "mean_steps"}`` of one cell's trial records; for a multi-behaviour
    :class:`Task` also ``positive_share``, ``negative_share``, ``other_share``, ``none_share`` (each with its
    ``*_ci95``)."""
    task = Task.single(target) if isinstance(target, str) else target
    n = len(trials)
    k = sum(1 for t in trials if task.success(t["label"]))
    dist = Counter(t["label"] for t in trials)
    out = {"rate": k / n if n else float("nan"), "n": n, "ci95": list(wilson_interval(k, n)),
           "distribution": {label: dist[label] for label in LABELS if dist[label]},
           "mean_steps": float(np.mean([t["steps"] for t in trials])) if n else float("nan")}
    if not task.is_single:
        outcomes = Counter(task.outcome(t["label"]) for t in trials)
        for kind in ("positive", "negative", "other", "none"):
            out[f"{kind}_share"] = outcomes[kind] / n if n else float("nan")
            out[f"{kind}_share_ci95"] = list(wilson_interval(outcomes[kind], n))
    return out


def read_trials(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a kill: that trial reruns
    return out
