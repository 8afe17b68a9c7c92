"""Typed configuration of the CALVIN experiments (YAML: ``config/calvin_experiment.yaml``).

Seeds are partitioned so that training data, goal images, validation segments and evaluation episodes
never share an episode seed (see :data:`SEED_RANGES`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from calvin_bridge.config import DATASET_CAMERAS
from dynaguide.config import load_config
from dynaguide.embedders.factory import EmbedderConfig
from dynaguide.guidance.goals import GuidanceConfig
from dynaguide.guidance.rtc import RTCConfig

#: episode-seed ranges of each use (``dynaguide calvin collect/goals`` seeds; evaluation trial seeds)
SEED_RANGES = {
    "train": (0, 1_000_000),                 # collect --seed 0, 500000 and 700000 (extra switch_on segments)
    "goals": (1_000_000, 3_000_000),         # calvin_bridge.datasets.HELDOUT_SEED_OFFSET (held-out + underspecified)
    "validation": (3_000_000, 4_000_000),    # collect --seed 3000000: start poses; trial seeds from 3500000: sweeps
    "evaluation": (5_000_000, 6_000_000),    # harness trial seeds
}

#: the first trial seed of validation sweeps (``--split validation``): inside SEED_RANGES["validation"], above its
#: start-pose collection seeds
VALIDATION_TRIAL_SEED = 3_500_000

ARTICULATED_TARGETS = ("switch_on", "switch_off", "drawer_open", "drawer_close", "door_left", "door_right",
                       "button_on", "button_off")
#: MovableObjects: the paper's block behaviours; our labeller folds touch and displace into ``touch_<colour>``
MOVABLE_TARGETS = ("touch_red", "touch_blue", "touch_pink")
METHODS = ("base", "dynaguide", "gpc", "itps", "goal_conditioned")


@dataclass(frozen=True)
class ObjectiveSetup:
    """One MultiObjectives setup (the paper's §4.3): several desired and/or undesired behaviours at once.

    ``positives`` / ``negatives``: behaviours whose held-out goal images are the positive / negative goals of
    Eq. 2 (either may be empty, not both); ``scene``: behaviours made possible in every trial's scene
    (:func:`calvin_bridge.experts.scene_for_behaviours`; empty = a fully random scene); ``sum_positives``:
    sum one logsumexp per positive behaviour (a product of likelihoods, the appendix's failing variant)
    instead of one logsumexp over all positive goals.  A trial succeeds when its first behaviour is a
    positive one, or — with no positives — any behaviour outside the negatives.
    """

    positives: tuple[str, ...] = ()
    negatives: tuple[str, ...] = ()
    scene: tuple[str, ...] = ()
    sum_positives: bool = False

    def __post_init__(self) -> None:
        if not self.positives and not self.negatives:
            raise ValueError("an objective setup needs positive behaviours, negative behaviours, or both")
        if set(self.positives) & set(self.negatives):
            raise ValueError(f"behaviours {sorted(set(self.positives) & set(self.negatives))} are both positive "
                             "and negative")
        if self.sum_positives and len(self.positives) < 2:
            raise ValueError("sum_positives needs at least two positive behaviours")


#: MultiObjectives setups.  Two positives: switch on + drawer open (the issue's example), both possible in
#: every scene.  Avoid: the drawer's two behaviours as negatives only, in fully random scenes — the drawer is
#: the articulated part the base policy moved most often in the ArticulatedParts evaluation (23 of 160 first
#: behaviours, ``results/calvin/articulated/``), so halving it is measurable.
MULTI_OBJECTIVE_SETUPS = {
    "switch_on+drawer_open": ObjectiveSetup(positives=("switch_on", "drawer_open"),
                                            scene=("switch_on", "drawer_open")),
    "switch_on+drawer_open_sum": ObjectiveSetup(positives=("switch_on", "drawer_open"),
                                                scene=("switch_on", "drawer_open"), sum_positives=True),
    "avoid_drawer": ObjectiveSetup(negatives=("drawer_open", "drawer_close")),
}


@dataclass
class DataConfig:
    """Where the collected segments live (``dynaguide calvin collect``/``goals`` outputs)."""

    train: tuple[str, ...] = ("runs/calvin/train_a.h5", "runs/calvin/train_b.h5")
    merged: str = "runs/calvin/train.h5"
    validation: str = "runs/calvin/val.h5"
    goals: str = "runs/calvin/goals.h5"
    camera: str = "third_person"          # dataset key of the static camera (= ``rgb_static`` of the env)
    static_size: int = 96                 # px the data was rendered at; the harness renders the same

    def __post_init__(self) -> None:
        # generated data live in a cache outside the checkout (``~/.cache/dynaguide/...``): expand ``~``
        self.train = tuple(os.path.expanduser(p) for p in self.train)
        for name in ("merged", "validation", "goals"):
            setattr(self, name, os.path.expanduser(getattr(self, name)))


@dataclass
class ModelConfig:
    """CPU-config models; ``policy_image_size`` is what the policy sees (frames are resized);
    ``policy_cameras``: the env cameras the base policy sees (``rgb_static`` always; ``rgb_gripper``: the wrist
    camera too, as the paper's policy)."""

    policy_image_size: int = 64
    n_obs_steps: int = 2
    horizon: int = 16
    n_action_steps: int = 8
    dynamics_pool: int = 2                # outcome latent = token grid average-pooled by this factor
    policy_cameras: tuple[str, ...] = ("rgb_static",)

    def __post_init__(self) -> None:
        self.policy_cameras = tuple(self.policy_cameras)
        unknown = [c for c in self.policy_cameras if c not in DATASET_CAMERAS]
        if unknown or "rgb_static" not in self.policy_cameras or len(set(self.policy_cameras)) != len(
                self.policy_cameras):
            raise ValueError(f"model.policy_cameras must list distinct cameras of {sorted(DATASET_CAMERAS)} "
                             f"including 'rgb_static', got {list(self.policy_cameras)}")


@dataclass
class TrainingConfig:
    policy_steps: int = 3000
    dynamics_steps: int = 2500
    batch_size: int = 64
    lr: float = 3e-4
    val_fraction: float = 0.05
    out_dir: str = "runs/calvin/models"
    export_dir: str = "checkpoints/calvin_effnet"
    #: UnderrepresentedBehaviors: keep only enough training segments of this behaviour for it to make up
    #: ``underrepresented_share`` of the base policy's training segments ("" = keep every segment)
    underrepresented_behaviour: str = ""
    underrepresented_share: float = 0.0
    #: seed of the initial weights and of the batch order (a second policy on the same data: another seed)
    seed: int = 0
    #: where and how the train stages run (dynaguide.training.TrainConfig; several processes: accelerate launch)
    device: str = "cpu"
    mixed_precision: str = "no"
    grad_accum: int = 1

    def __post_init__(self) -> None:
        self.out_dir = os.path.expanduser(self.out_dir)
        if self.underrepresented_behaviour and not 0.0 < self.underrepresented_share < 1.0:
            raise ValueError(f"underrepresented_share must be in (0, 1), got {self.underrepresented_share}")


@dataclass
class EvalConfig:
    """Protocol of the paper's appendix: ``trials`` per (target, method), ``horizon`` control steps, stop
    at the first detected behaviour; start robot poses from validation segments; trial ``i`` of a cell
    uses episode seed ``seed + 1000 * target_index + i`` (the same scenes for every method).

    ``latency_steps = d > 0`` evaluates wall-clock execution instead of lockstep: a chunk planned from the
    observation at step t reaches the robot d control steps later, so it is executed from its step d on while
    the previous chunk's steps ``n_action_steps … n_action_steps + d − 1`` run meanwhile (the robot holds at
    the start of a trial) — what the bridge's executor does with back-to-back replanning when a chunk takes
    d · dt to compute (d = ceil(p95 compute / dt) from ``dynaguide bench realtime``).  Needs
    ``n_action_steps + d ≤ horizon``.

    ``rtc.enabled``: real-time chunking (in lockstep, ``latency_steps = 0``, nothing is frozen and only the
    overlap is pulled towards the previous plan: chunk consistency) — each chunk is planned with the previous
    chunk's remaining actions as its prefix (the d actions that run during the delay frozen, the rest of the
    overlap softly weighted; :mod:`dynaguide.guidance.rtc`); what executes is unchanged, the chunk agrees with it."""

    trials: int = 20
    horizon: int = 400
    batch_envs: int = 8
    seed: int = 5_000_000
    split: str = "evaluation"             # or "validation" (choosing s, sigma, M): seed must lie in its range
    goals_per_target: int = 20
    goal_set: str = "heldout"             # or "underspecified"
    negatives: str = "none"               # "none" or "others": the other behaviours' goals as negatives
    gpc_samples: int = 10
    itps_scale: float = 1.0
    latency_steps: int = 0                # 0 = lockstep; d > 0: chunks arrive d control steps after their observation
    commit_steps: int = 0                 # actions run per chunk before replanning (0: the policy's n_action_steps)
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    rtc: RTCConfig = field(default_factory=RTCConfig)

    def __post_init__(self) -> None:
        if self.trials < 1 or self.horizon < 1 or self.batch_envs < 1:
            raise ValueError("trials, horizon and batch_envs must be >= 1")
        if not isinstance(self.latency_steps, int) or self.latency_steps < 0:
            raise ValueError(f"latency_steps must be an integer >= 0, got {self.latency_steps!r}")
        if not isinstance(self.commit_steps, int) or self.commit_steps < 0:
            raise ValueError(f"commit_steps must be an integer >= 0 (0 = the policy's n_action_steps), "
                             f"got {self.commit_steps!r}")
        if self.negatives not in ("none", "others"):
            raise ValueError(f"negatives must be 'none' or 'others', got {self.negatives!r}")
        if self.goal_set not in ("heldout", "underspecified"):
            raise ValueError(f"goal_set must be 'heldout' or 'underspecified', got {self.goal_set!r}")
        if self.split not in ("evaluation", "validation"):
            raise ValueError(f"split must be 'evaluation' or 'validation', got {self.split!r}")
        lo, hi = SEED_RANGES[self.split]
        if not lo <= self.seed < hi - 1000 * 16:
            raise ValueError(f"{self.split} trial seed {self.seed} is outside its range {SEED_RANGES[self.split]}")


@dataclass
class CalvinExperimentConfig:
    data: DataConfig = field(default_factory=DataConfig)
    embedder: EmbedderConfig = field(default_factory=EmbedderConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    @classmethod
    def load(cls, path: str | Path | None) -> CalvinExperimentConfig:
        return cls() if path is None else load_config(cls, path)
