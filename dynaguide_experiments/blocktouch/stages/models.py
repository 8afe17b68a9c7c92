"""The trained models, loaded lazily from the stages' checkpoints, and the action sampler of each evaluated
method built from them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dynaguide.checkpoint import load_checkpoint
from dynaguide.embedders.factory import make_embedder
from dynaguide.guidance import GoalLatents

from ..config import BlockTouchConfig
from ..env import NUM_BLOCKS
from ..methods import (BaseSampler, ClassifierGuidedSampler, GoalConditionedSampler, LatentGuidedSampler,
                       SamplingBaselineSampler)
from .workdir import Paths

IMAGE_KEY = "rgb"


def unit_stats(model: torch.nn.Module) -> None:
    """Actions and agent positions both live in [-1, 1] by construction: fixed normaliser stats, so the
    policy, classifier and dynamics model share one normalised action space (guidance needs no transform)."""
    lo, hi = -torch.ones(2), torch.ones(2)
    model.set_normalizer_stats(lo, hi, lo, hi)


class Models:
    """Lazily loaded checkpoints (EMA weights where saved)."""

    def __init__(self, cfg: BlockTouchConfig) -> None:
        self.cfg = cfg
        self.paths = Paths(cfg)
        self._cache: dict[str, object] = {}

    def _load(self, name: str, directory: Path):
        if name not in self._cache:
            if not (directory / "latest").is_dir():
                raise ValueError(f"missing checkpoint {directory / 'latest'}: run the training stages first")
            model, _ = load_checkpoint(directory / "latest")
            self._cache[name] = model.requires_grad_(False)
        return self._cache[name]

    @property
    def policy(self):
        return self._load("policy", self.paths.policy)

    @property
    def goal_policy(self):
        return self._load("goal_policy", self.paths.goal_policy)

    @property
    def classifier(self):
        return self._load("classifier", self.paths.classifier)

    @property
    def dynamics(self):
        return self._load("dynamics", self.paths.dynamics)

    @property
    def embedder(self):
        if "embedder" not in self._cache:
            self._cache["embedder"] = make_embedder(self.cfg.embedder).eval()
        return self._cache["embedder"]


def build_sampler(method: str, models: Models, cfg: BlockTouchConfig, goals: dict[int, np.ndarray] | None):
    e = cfg.eval
    ddim = cfg.policy.ddim
    if method == "base":
        return BaseSampler(models.policy, ddim)
    if method == "dynaguide_classifier":
        return ClassifierGuidedSampler(models.policy, models.classifier, ddim, e.classifier_scale, e.stochastic_steps,
                                       e.stochastic_mode, e.other_weight, IMAGE_KEY)
    if method == "sampling":
        return SamplingBaselineSampler(models.policy, models.classifier, ddim, e.sampling_num, e.other_weight,
                                       IMAGE_KEY)
    if method == "dynaguide_latent":
        assert goals is not None
        sets = {}
        for target in range(NUM_BLOCKS):
            if len(goals[target]) == 0:
                continue
            others = [goals[c] for c in range(NUM_BLOCKS) if c != target and len(goals[c])]
            neg = (torch.from_numpy(np.moveaxis(np.concatenate(others), -1, -3).copy())
                   if (others and e.latent_negatives) else None)
            pos = torch.from_numpy(np.moveaxis(goals[target], -1, -3).copy())
            sets[target] = GoalLatents.from_images(models.embedder, models.dynamics, pos, neg, e.latent_guidance)
        return LatentGuidedSampler(models.policy, models.dynamics, models.embedder, sets, ddim, IMAGE_KEY)
    if method == "goal_conditioned":
        return GoalConditionedSampler(models.goal_policy, ddim)
    raise ValueError(f"unknown method {method!r}")
