"""The BlockTouch experiment's configuration (one YAML file, see ``config/blocktouch.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from dynaguide.dynamics import LatentDynamicsConfig
from dynaguide.embedders.factory import EmbedderConfig
from dynaguide.guidance import GuidanceConfig
from dynaguide.policy import DiffusionPolicyConfig
from dynaguide.training import TrainConfig

from .classifier import OutcomeClassifierConfig
from .env import BlockTouchEnvConfig
from .layouts import LAYOUT_NAMES
from .methods import METHOD_NAMES
from .scripted import CollectorConfig


def _policy_default() -> DiffusionPolicyConfig:
    return DiffusionPolicyConfig.cpu(image_keys=("rgb",), image_size=64, proprio_dim=2, action_dim=2,
                                     horizon=16, n_obs_steps=2, n_action_steps=8, random_shift=4)


def _classifier_default() -> OutcomeClassifierConfig:
    return OutcomeClassifierConfig(num_classes=4, image_size=64, proprio_dim=2, action_dim=2, horizon=16,
                                   path_features=8, noised_fraction=0.8, geometric_p=0.02)


def _embedder_default() -> EmbedderConfig:
    return EmbedderConfig(kind="random", image_size=64, patch_size=8, dim=64, seed=0)


def _dynamics_default() -> LatentDynamicsConfig:
    return LatentDynamicsConfig.cpu(embed_tokens=64, embed_dim=64, pool=2, model_dim=128, n_layers=3, n_heads=4,
                                    proprio_dim=2, action_dim=2, horizon=16)


def _train(steps: int, lr: float, ema: float = 0.0) -> TrainConfig:
    return TrainConfig(steps=steps, batch_size=64, lr=lr, warmup_steps=100, lr_schedule="cosine", ema_decay=ema,
                       val_every=500, val_batches=4, checkpoint_every=500, log_every=50)


@dataclass
class EvalConfig:
    """Evaluation settings; the guidance weights and M for (a) are the paper's toy values, s was validated."""

    layouts: tuple[str, ...] = LAYOUT_NAMES
    methods: tuple[str, ...] = tuple(m for m in METHOD_NAMES if m != "goal_conditioned")
    """The goal-conditioned baseline trains a second policy; add it with ``--methods``."""
    rollouts: int = 100
    horizon: int = 400
    n_action_steps: int = 8
    seed: int = 1000
    max_batch: int | None = None
    classifier_scale: float = 2.0
    """s for (a), chosen on validation scenes from 0.5 (paper), 1, 2, 4 (results/blocktouch/README.md)."""
    stochastic_steps: int = 4
    stochastic_mode: str = "renoise"
    """"repeat" (official code) drives unguided chunks to the clip boundary here; see config/blocktouch.yaml."""
    other_weight: float = -0.33
    sampling_num: int = 10
    latent_guidance: GuidanceConfig = field(default_factory=lambda: GuidanceConfig(sigma=1.0, scale=0.5,
                                                                                   stochastic_steps=4,
                                                                                           stochastic_mode="renoise"))
    latent_scale_match: bool = True
    """Replace ``latent_guidance.scale`` by the value matching (a)'s gradient strength (see
    ``stages.calibration.calibrate_latent_scale``; computed on training frames, never on evaluation scenes)."""
    latent_negatives: bool = True
    goals_per_class: int = 16
    """Goal images per colour and layout: final frames of scripted episodes in that layout that touched it."""
    goal_seed: int = 777
    trajectories_plotted: int = 16
    """Extra rollouts from the layout's first scene per (layout, method), for the trajectory figures."""

    def __post_init__(self) -> None:
        self.layouts = tuple(self.layouts)
        self.methods = tuple(self.methods)
        for name in self.layouts:
            if name not in LAYOUT_NAMES:
                raise ValueError(f"unknown layout {name!r}; choose from {list(LAYOUT_NAMES)}")
        for name in self.methods:
            if name not in METHOD_NAMES:
                raise ValueError(f"unknown method {name!r}; choose from {list(METHOD_NAMES)}")
        if self.rollouts <= 0 or self.horizon <= 0 or self.goals_per_class <= 0 or self.sampling_num <= 0:
            raise ValueError("rollouts, horizon, goals_per_class and sampling_num must be positive")


@dataclass
class BlockTouchConfig:
    """Everything the ``dynaguide blocktouch`` stages need.  ``work_dir`` holds data and checkpoints
    (not committed); ``results_dir`` the results JSON, table and figures."""

    work_dir: str = "runs/blocktouch"
    results_dir: str = "results/blocktouch"
    threads: int = 1
    """torch intra-op threads; 1 is much faster than 2 on a shared, oversubscribed 2-core machine."""
    val_fraction: float = 0.05
    outcome_failures: bool = True
    """Train the outcome models (classifier, latent dynamics) on the demonstrations *and* the collector's
    failure episodes (paths that touched another block), so they learn what a blocked path leads to; the
    policy trains on the demonstrations only."""
    outcome_plan_tail: bool = False
    """Outcome-model chunks that run past an episode's end continue with the scripted plan instead of
    repeating the last action (see ``dataset.outcome_chunk``).  Off by default: on validation scenes it did
    not raise guided target-touch rates (results/blocktouch/README.md)."""
    env: BlockTouchEnvConfig = field(default_factory=BlockTouchEnvConfig)
    collect: CollectorConfig = field(default_factory=CollectorConfig)
    policy: DiffusionPolicyConfig = field(default_factory=_policy_default)
    policy_train: TrainConfig = field(default_factory=lambda: _train(2000, 1e-3, ema=0.995))
    goal_policy_train: TrainConfig = field(default_factory=lambda: _train(2000, 1e-3, ema=0.995))
    classifier: OutcomeClassifierConfig = field(default_factory=_classifier_default)
    classifier_train: TrainConfig = field(default_factory=lambda: _train(4000, 1e-3))
    embedder: EmbedderConfig = field(default_factory=_embedder_default)
    dynamics: LatentDynamicsConfig = field(default_factory=_dynamics_default)
    dynamics_train: TrainConfig = field(default_factory=lambda: _train(1500, 5e-4))
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        if not 0.0 <= self.val_fraction < 0.5:
            raise ValueError(f"val_fraction must be in [0, 0.5), got {self.val_fraction}")
        if self.policy.image_keys != ("rgb",) or self.policy.proprio_dim != 2 or self.policy.action_dim != 2:
            raise ValueError("the BlockTouch policy must use image_keys ['rgb'], proprio_dim 2 and action_dim 2")
        sizes = {self.env.image_size, self.policy.image_size, self.classifier.image_size}
        if len(sizes) != 1:
            raise ValueError(f"env, policy and classifier image_size must agree, got {sorted(sizes)}")
        if self.dynamics.horizon != self.policy.horizon or self.classifier.horizon != self.policy.horizon:
            raise ValueError("policy, classifier and dynamics horizons must agree")
        if self.dynamics.embed_tokens != (self.embedder.image_size // self.embedder.patch_size) ** 2 \
                or self.dynamics.embed_dim != self.embedder.dim:
            raise ValueError("dynamics embed_tokens/embed_dim must match the embedder's token grid and width")


def quick_config(base: BlockTouchConfig | None = None) -> BlockTouchConfig:
    """Tiny sizes for CI (``run --quick``): unscored, checks that every stage and every method runs end to end."""
    from dataclasses import replace

    cfg = base or BlockTouchConfig()
    tiny_train = TrainConfig(steps=30, batch_size=16, lr=1e-3, warmup_steps=5, lr_schedule="cosine", ema_decay=0.0,
                             val_every=30, val_batches=1, checkpoint_every=30, log_every=10, progress=False)
    env = replace(cfg.env, image_size=32, supersample=1)
    return replace(
        cfg,
        work_dir=cfg.work_dir.rstrip("/") + "_quick",
        results_dir=cfg.results_dir.rstrip("/") + "/quick",
        env=env,
        collect=replace(cfg.collect, num_demos=40),
        policy=replace(cfg.policy, image_size=32, num_keypoints=8, cnn_width=8, down_dims=(16, 32), step_embed_dim=16),
        policy_train=replace(tiny_train, ema_decay=0.9),
        goal_policy_train=replace(tiny_train, ema_decay=0.9),
        classifier=replace(cfg.classifier, image_size=32, num_keypoints=8, cnn_width=8, hidden_dim=32),
        classifier_train=tiny_train,
        embedder=replace(cfg.embedder, image_size=32, patch_size=8, dim=16),
        dynamics=replace(cfg.dynamics, embed_tokens=16, embed_dim=16, pool=2, model_dim=32, n_layers=1, n_heads=2),
        dynamics_train=tiny_train,
        eval=replace(cfg.eval, methods=METHOD_NAMES, rollouts=4, horizon=24, goals_per_class=2, sampling_num=2,
                     stochastic_steps=2,
                     latent_guidance=replace(cfg.eval.latent_guidance, stochastic_steps=2), trajectories_plotted=4),
    )
